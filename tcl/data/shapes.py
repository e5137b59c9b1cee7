"""The embedded dataset: a deterministic COCO/VQA-format world of coloured shapes.

Every file is written in the official layout (COCO ``images/<split>/COCO_<split>_%012d.jpg``, COCO captions JSON,
VQA v2 questions and annotations JSON), so the loaders that read real COCO and VQA v2 read this data unchanged.
Two extra fields, which the official layout allows and its readers ignore, serve diagnostics: each image's
``num_objects`` and each annotation's ``question_family``.

Each image holds 1-4 non-overlapping objects (colour x shape x size). Questions come in six families (colour, shape,
count, existence, position, relation) whose ground-truth answers are balanced within each family, so a model that
ignores the image scores poorly. Ten "annotators" answer each question, some with synonyms ("2"/"two",
"gray"/"grey") or plausible mistakes, so the soft VQA accuracy matters.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from tcl.atomic import write_json_atomic

logger = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (230, 200, 30),
    "purple": (135, 55, 175),
    "orange": (240, 135, 25),
    "gray": (120, 120, 120),
}
SHAPES = ("circle", "square", "triangle", "cross")
# Object radius as a fraction of the image side.
SIZES = {"small": 0.10, "large": 0.17}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
# The words a caption must get right about the scene: what MLM accuracy on masked content words measures.
# By group, each group a tuple of classes of interchangeable words (a swap stays within its class).
CONTENT_WORD_GROUPS = {"colour": (tuple(COLORS),), "shape": (SHAPES, tuple(PLURALS.values())),
                       "size": (tuple(SIZES),), "number": (NUMBER_WORDS,)}
CONTENT_WORDS = tuple(word for classes in CONTENT_WORD_GROUPS.values() for words in classes for word in words)
SPLITS = ("train2014", "val2014")
FIRST_IMAGE_ID = {"train2014": 1, "val2014": 500_001}

# Question families and the official-style fields that describe them.
FAMILIES = ("color", "shape", "count", "existence", "position", "relation")
ANSWER_TYPES = {"color": "other", "shape": "other", "count": "number", "existence": "yes/no",
                "position": "other", "relation": "yes/no"}
FAMILY_OF_QUESTION_TYPE = {"what color is the": "color", "what shape is the": "shape", "how many": "count",
                           "is there a": "existence", "are there any": "existence", "where is the": "position",
                           "is the": "relation"}

# Annotator noise: answers that mean the same (some are equal after the official normalisation, some are not) ...
SYNONYMS = {"gray": ["grey"], "0": ["zero", "none"], "1": ["one"], "2": ["two"], "3": ["three"], "4": ["four"],
            "yes": ["yes.", "yes!", "yeah"], "no": ["no.", "no!", "nope"], "left": ["the left", "left side"],
            "right": ["the right", "right side"], "top": ["the top", "up"], "bottom": ["the bottom", "down"],
            "square": ["box", "rectangle"], "circle": ["round", "ball"], "cross": ["plus", "x"],
            "triangle": ["triangle."]}
# ... and plausible mistakes.
CONFUSIONS = {"red": ["orange"], "orange": ["red", "yellow"], "yellow": ["orange"], "blue": ["purple"],
              "purple": ["blue"], "green": ["blue"], "gray": ["blue"], "circle": ["square"],
              "square": ["circle"], "triangle": ["square"], "cross": ["square"], "0": ["1"], "1": ["2", "0"],
              "2": ["3", "1"], "3": ["4", "2"], "4": ["3"], "yes": ["no"], "no": ["yes"],
              "left": ["right"], "right": ["left"], "top": ["bottom"], "bottom": ["top"]}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class SceneObject:
    """One object; (x, y) is its centre and r its radius, in pixels of the final image."""

    color: str
    shape: str
    size: str
    x: float
    y: float
    r: float

    def describe(self, attributes: tuple[str, ...] = ("size", "color", "shape")) -> str:
        return " ".join(getattr(self, name) for name in attributes)

    def box(self) -> list[float]:
        """The tight box [x, y, width, height] (COCO's layout, pixels) of the shape as ``_draw_shape`` draws it."""
        half_width, top, bottom = self.r, -self.r, self.r
        if self.shape == "square":
            half_width, top, bottom = 0.85 * self.r, -0.85 * self.r, 0.85 * self.r
        elif self.shape == "triangle":
            half_width, bottom = 0.95 * self.r, 0.75 * self.r
        return [round(self.x - half_width, 2), round(self.y + top, 2), round(2 * half_width, 2),
                round(bottom - top, 2)]


@dataclass(frozen=True)
class QA:
    family: str
    question_type: str
    question: str
    answer: str


# ---------------------------------------------------------------------------------------------------------------------
# Scenes and rendering


MAX_OBJECTS = 4


def sample_scene(rng: np.random.Generator, image_size: int, max_objects: int = MAX_OBJECTS) -> list[SceneObject]:
    """Samples 1..``max_objects`` objects that do not overlap and stay inside the image."""
    num_objects = int(rng.integers(1, max_objects + 1))
    while True:
        objects: list[SceneObject] = []
        for _ in range(num_objects):
            placed = place_object(rng, image_size, objects)
            if placed is None:
                break
            objects.append(placed)
        if len(objects) == num_objects:
            return objects


def place_object(rng: np.random.Generator, image_size: int, others: list[SceneObject]) -> SceneObject | None:
    """One object of random colour, shape and size, placed at random clear of ``others`` and of the border; None
    when 100 tries find no room."""
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    size = str(rng.choice(list(SIZES)))
    r = SIZES[size] * image_size
    margin = 0.03 * image_size
    for _ in range(100):
        x, y = rng.uniform(r + margin, image_size - r - margin, size=2)
        if all(math.hypot(x - o.x, y - o.y) > r + o.r + margin for o in others):
            return SceneObject(color, shape, size, float(x), float(y), float(r))
    return None


def render_scene(objects: list[SceneObject], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draws the scene at 4x resolution and downsamples, which anti-aliases the edges."""
    side = image_size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(215, 250, size=3))
    canvas = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        jitter = rng.integers(-12, 13, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[obj.color], jitter))
        _draw_shape(draw, obj, fill)
    return canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, ...]) -> None:
    x, y, r = obj.x * SUPERSAMPLE, obj.y * SUPERSAMPLE, obj.r * SUPERSAMPLE
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "square":
        half = r * 0.85
        draw.rectangle([x - half, y - half, x + half, y + half], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - r), (x - r * 0.95, y + r * 0.75), (x + r * 0.95, y + r * 0.75)], fill=fill)
    else:  # cross: a plus sign made of two bars
        bar = r * 0.32
        draw.rectangle([x - r, y - bar, x + r, y + bar], fill=fill)
        draw.rectangle([x - bar, y - r, x + bar, y + r], fill=fill)


# ---------------------------------------------------------------------------------------------------------------------
# Language: referring expressions, captions, questions


def refer(obj: SceneObject, objects: list[SceneObject], exclude: str | None = None) -> str | None:
    """The shortest description that picks out ``obj`` alone ("circle", "red circle", "small red circle")."""
    options = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")]
    if exclude == "shape":
        options = [("color",), ("size", "color")]
    elif exclude == "color":
        options = [("shape",), ("size", "shape")]
    for attributes in options:
        matches = [o for o in objects if all(getattr(o, a) == getattr(obj, a) for a in attributes)]
        if len(matches) == 1:
            phrase = obj.describe(attributes)
            return phrase if "shape" in attributes else f"{phrase} object"
    return None


def _article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def _location(obj: SceneObject, image_size: int) -> str:
    return location_words(obj.x, obj.y, image_size, image_size)


def location_words(x: float, y: float, width: float, height: float) -> str:
    """Where a point lies in an image, in the captions' words: "the top left", "the bottom", "the center"."""
    vertical = "top" if y < height / 3 else "bottom" if y > 2 * height / 3 else "middle"
    horizontal = "left" if x < width / 3 else "right" if x > 2 * width / 3 else "center"
    if vertical == "middle" and horizontal == "center":
        return "the center"
    if vertical == "middle":
        return f"the {horizontal}"
    if horizontal == "center":
        return f"the {vertical}"
    return f"the {vertical} {horizontal}"


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def make_captions(objects: list[SceneObject], image_size: int, rng: np.random.Generator) -> list[str]:
    """Five varied captions: a full listing, a count, a location, a relation and a summary of colours/shapes."""
    listing = [_article(o.describe()) for o in objects]
    joined = listing[0] if len(listing) == 1 else ", ".join(listing[:-1]) + " and " + listing[-1]
    n = len(objects)
    noun = "shape" if n == 1 else "shapes"
    focus = objects[int(rng.integers(n))]
    captions = [
        str(rng.choice(["there is {}.", "an image of {}.", "a picture with {}.", "{} on a plain background."]))
        .format(joined),
        str(rng.choice(["{} {} on a light background.", "a picture containing {} {}.", "exactly {} {}."]))
        .format(NUMBER_WORDS[n], noun),
        f"{_article(focus.describe())} in {_location(focus, image_size)} of the image.",
    ]
    if n >= 2:
        a, b = (objects[i] for i in rng.choice(n, size=2, replace=False))
        captions.append(f"{_article(a.describe(('color', 'shape')))} {_relation(a, b)} "
                        f"{_article(b.describe(('color', 'shape')))}.")
    else:
        captions.append(f"a single {focus.size} {focus.color} {focus.shape}.")
    colors = sorted({o.color for o in objects})
    shapes = sorted({PLURALS[o.shape] if sum(p.shape == o.shape for p in objects) > 1 else o.shape for o in objects})
    captions.append(f"{' and '.join(shapes)} colored {' and '.join(colors)}.")
    return captions


def question_candidates(family: str, objects: list[SceneObject], image_size: int,
                        rng: np.random.Generator) -> list[QA]:
    """All well-posed questions of one family about the scene (ambiguous ones are left out)."""
    return _FAMILY_BUILDERS[family](objects, image_size, rng)


def _color_questions(objects, image_size, rng) -> list[QA]:
    questions = []
    for obj in objects:
        ref = refer(obj, objects, exclude="color")
        if ref:
            questions.append(QA("color", "what color is the", f"what color is the {ref}?", obj.color))
    return questions


def _shape_questions(objects, image_size, rng) -> list[QA]:
    questions = []
    for obj in objects:
        ref = refer(obj, objects, exclude="shape")
        if ref:
            questions.append(QA("shape", "what shape is the", f"what shape is the {ref}?", obj.shape))
    return questions


def _count_questions(objects, image_size, rng) -> list[QA]:
    questions = [QA("count", "how many", str(rng.choice(["how many shapes are there?",
                                                           "how many objects are in the picture?"])),
                    str(len(objects)))]
    for color in COLORS:
        count = sum(o.color == color for o in objects)
        questions.append(QA("count", "how many", f"how many {color} objects are there?", str(count)))
    for shape in SHAPES:
        count = sum(o.shape == shape for o in objects)
        questions.append(QA("count", "how many", f"how many {PLURALS[shape]} are there?", str(count)))
    for size in SIZES:
        count = sum(o.size == size for o in objects)
        questions.append(QA("count", "how many", f"how many {size} shapes are there?", str(count)))
    return questions


def _existence_questions(objects, image_size, rng) -> list[QA]:
    questions = []
    for color in COLORS:
        for shape in SHAPES:
            present = any(o.color == color and o.shape == shape for o in objects)
            questions.append(QA("existence", "is there a", f"is there a {color} {shape}?", "yes" if present else "no"))
    for color in COLORS:
        present = any(o.color == color for o in objects)
        questions.append(QA("existence", "are there any", f"are there any {color} objects?",
                            "yes" if present else "no"))
    return questions


def _position_questions(objects, image_size, rng) -> list[QA]:
    questions, margin = [], 0.1 * image_size
    for obj in objects:
        ref = refer(obj, objects)
        if ref is None:
            continue
        if abs(obj.x - image_size / 2) > margin:
            questions.append(QA("position", "where is the", f"where is the {ref}, left or right?",
                                "left" if obj.x < image_size / 2 else "right"))
        if abs(obj.y - image_size / 2) > margin:
            questions.append(QA("position", "where is the", f"where is the {ref}, top or bottom?",
                                "top" if obj.y < image_size / 2 else "bottom"))
    return questions


def _relation_questions(objects, image_size, rng) -> list[QA]:
    questions, margin = [], 0.08 * image_size
    for a in objects:
        for b in objects:
            ref_a, ref_b = refer(a, objects), refer(b, objects)
            if a is b or ref_a is None or ref_b is None:
                continue
            for words, delta in (("left of", b.x - a.x), ("right of", a.x - b.x), ("above", b.y - a.y),
                                 ("below", a.y - b.y)):
                if abs(delta) > margin:  # too close along this axis to be unambiguous otherwise
                    questions.append(QA("relation", "is the", f"is the {ref_a} {words} the {ref_b}?",
                                        "yes" if delta > 0 else "no"))
    return questions


_FAMILY_BUILDERS: dict[str, Callable[..., list[QA]]] = {
    "color": _color_questions, "shape": _shape_questions, "count": _count_questions,
    "existence": _existence_questions, "position": _position_questions, "relation": _relation_questions,
}


class BalancedQuestionSampler:
    """Chooses questions so that the ground-truth answers stay balanced within each family.

    For each pick it takes the answer seen least often so far in that family (among the answers the scene allows),
    then a random question with that answer.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.answer_counts: dict[str, Counter] = defaultdict(Counter)

    def pick(self, candidates: list[QA], exclude: set[str]) -> QA | None:
        candidates = [qa for qa in candidates if qa.question not in exclude]
        if not candidates:
            return None
        family = candidates[0].family
        counts = self.answer_counts[family]
        answers = sorted({qa.answer for qa in candidates})
        fewest = min(counts[a] for a in answers)
        answer = str(self.rng.choice([a for a in answers if counts[a] == fewest]))
        chosen = [qa for qa in candidates if qa.answer == answer]
        qa = chosen[int(self.rng.integers(len(chosen)))]
        counts[answer] += 1
        return qa


def annotator_answers(answer: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Ten human answers: mostly the truth, some synonyms and plausible mistakes (official VQA fields)."""
    num_noisy = int(rng.choice(5, p=[0.35, 0.3, 0.2, 0.1, 0.05]))
    noisy_slots = set(rng.choice(10, size=num_noisy, replace=False).tolist())
    answers = []
    for slot in range(10):
        text, confidence = answer, "yes"
        if slot in noisy_slots:
            if rng.random() < 0.5 and answer in SYNONYMS:
                text, confidence = str(rng.choice(SYNONYMS[answer])), "yes"
            else:
                text, confidence = str(rng.choice(CONFUSIONS[answer])), str(rng.choice(["maybe", "no"]))
        answers.append({"answer": text, "answer_confidence": confidence, "answer_id": slot + 1})
    return answers


# ---------------------------------------------------------------------------------------------------------------------
# Writing a split


@dataclass
class SplitData:
    images: list[dict[str, Any]]
    captions: list[dict[str, Any]]
    questions: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    # COCO instances: one box per object, its shape as the category and its size and colour as attributes.
    instances: list[dict[str, Any]] = field(default_factory=list)


def generate_split(split: str, num_images: int, image_size: int, questions_per_image: int, seed: int,
                   image_dir: Path, progress: Callable[[Iterator], Iterator] = iter,
                   max_objects: int = MAX_OBJECTS, extra_relation_questions: int = 0) -> SplitData:
    """Renders and annotates one split (scenes of 1..``max_objects`` objects), writing its JPEG files into
    ``image_dir``. ``extra_relation_questions``: as many more relation
    questions per image with two objects or more (drawn from a random stream of their own, so the images, captions
    and other questions are those of the same split without them)."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    sampler = BalancedQuestionSampler(rng)
    extra_rng = np.random.default_rng([seed, SPLITS.index(split), 1])
    extra_sampler = BalancedQuestionSampler(extra_rng)
    data = SplitData([], [], [], [])
    image_dir.mkdir(parents=True, exist_ok=True)
    for index in progress(range(num_images)):
        image_id = FIRST_IMAGE_ID[split] + index
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        objects = sample_scene(rng, image_size, max_objects)
        render_scene(objects, image_size, rng).save(image_dir / file_name, quality=92)
        data.images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size,
                            "license": 1, "coco_url": "", "flickr_url": "", "date_captured": "2014-01-01 00:00:00",
                            "num_objects": len(objects)})
        data.instances += [_instance(len(data.instances) + k + 1, image_id, obj) for k, obj in enumerate(objects)]
        for caption in make_captions(objects, image_size, rng):
            data.captions.append({"id": len(data.captions) + 1, "image_id": image_id, "caption": caption})
        questions = _questions_for_image(objects, image_size, questions_per_image, sampler, rng)
        for k, qa in enumerate(questions):
            _append_question(data, image_id, image_id * 1000 + k, qa, rng)
        asked = {qa.question for qa in questions}
        for k in range(len(questions), len(questions) + extra_relation_questions):
            qa = extra_sampler.pick(_relation_questions(objects, image_size, extra_rng), asked)
            if qa is None:
                break
            asked.add(qa.question)
            _append_question(data, image_id, image_id * 1000 + k, qa, extra_rng)
    return data


def _instance(annotation_id: int, image_id: int, obj: SceneObject) -> dict[str, Any]:
    box = obj.box()
    return {"id": annotation_id, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1, "bbox": box,
            "area": round(box[2] * box[3], 2), "iscrowd": 0, "attributes": [obj.size, obj.color]}


def _questions_for_image(objects, image_size, count, sampler, rng) -> list[QA]:
    chosen: list[QA] = []
    asked: set[str] = set()
    families = list(FAMILIES)
    for _ in range(2 * count):
        if len(chosen) == count:
            break
        family = families[len(chosen) % len(families)] if len(chosen) < len(families) else str(rng.choice(FAMILIES))
        qa = sampler.pick(question_candidates(family, objects, image_size, rng), asked)
        if qa is not None:
            chosen.append(qa)
            asked.add(qa.question)
    return chosen


def _append_question(data: SplitData, image_id: int, question_id: int, qa: QA, rng: np.random.Generator) -> None:
    answers = annotator_answers(qa.answer, rng)
    most_common = Counter(a["answer"] for a in answers).most_common(1)[0][0]
    data.questions.append({"image_id": image_id, "question": qa.question, "question_id": question_id})
    data.annotations.append({"question_type": qa.question_type, "multiple_choice_answer": most_common,
                             "answers": answers, "image_id": image_id, "answer_type": ANSWER_TYPES[qa.family],
                             "question_id": question_id, "question_family": qa.family})


def write_split(out: Path, split: str, data: SplitData) -> None:
    """Writes the COCO captions and instances files and the VQA v2 questions/annotations files of one split."""
    info = {"description": "tcl generated shapes world (COCO layout)", "version": "1.0", "year": 2014,
            "contributor": "tcl", "date_created": "2014-01-01 00:00:00"}
    licenses = [{"id": 1, "name": "CC0", "url": ""}]
    annotations = out / "annotations"
    write_json_atomic({"info": info, "licenses": licenses, "images": data.images, "annotations": data.captions},
                      annotations / f"captions_{split}.json")
    # COCO's instances layout; "attributes" (the words a phrase puts before the category name) is our addition, as
    # Visual Genome has them. What the grounding term of pretraining reads (loss.grounding_weight).
    categories = [{"id": k + 1, "name": shape, "supercategory": "shape"} for k, shape in enumerate(SHAPES)]
    write_json_atomic({"info": info, "licenses": licenses, "images": data.images, "annotations": data.instances,
                       "categories": categories}, annotations / f"instances_{split}.json")
    write_json_atomic({"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": licenses[0],
                       "data_subtype": split, "questions": data.questions},
                      annotations / f"v2_OpenEnded_mscoco_{split}_questions.json")
    write_json_atomic({"info": info, "license": licenses[0], "data_subtype": split, "annotations": data.annotations},
                      annotations / f"v2_mscoco_{split}_annotations.json")
