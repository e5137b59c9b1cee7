"""Data: the generated shapes world, COCO/VQA/ALBEF/HF loaders, tokenizer, transforms, bad-sample policy."""
