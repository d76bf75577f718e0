"""The pinned task instructions and how a sample becomes the text after the image (torch-free).

Prompt wording moves LLaVA-1.5's CIDEr from ~10 to ~120 and OCR tokens move TextVQA by ~12 points
(DESIGN.md), so these are protocol, not decoration: the benchmark tasks pin them, calibration and the
reload check ask the same caption instruction, and the demo model was trained on it.
"""

from __future__ import annotations

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
VQA_PROMPT = "Answer the question using a single word or phrase."
OPEN_VQA_PROMPT = ""  # the question (a full user post) is the instruction


def caption_instruction(sample, prompt: str, ocr_tokens: bool) -> str:
    return prompt


def vqa_instruction(sample, prompt: str, ocr_tokens: bool) -> str:
    # LLaVA-1.5's TextVQA format: question, optional OCR line, then the answer-style instruction.
    lines = [sample.question.strip()]
    if ocr_tokens and sample.extras.get("ocr_tokens"):
        lines.append("Reference OCR token: " + ", ".join(sample.extras["ocr_tokens"]))
    if prompt:
        lines.append(prompt)
    return "\n".join(lines)


def open_vqa_instruction(sample, prompt: str, ocr_tokens: bool) -> str:
    # VQAonline questions are full user posts; their optional context (post body) follows the title.
    lines = [sample.question.strip()]
    context = (sample.extras or {}).get("context")
    if context:
        lines.append(f"Context: {context.strip()}")
    if prompt:
        lines.append(prompt)
    return "\n".join(lines)


# task name -> (pinned prompt, instruction builder); `benchmarks.tasks` adds scoring on top of these.
INSTRUCTIONS = {
    "caption": (CAPTION_PROMPT, caption_instruction),
    "vqa": (VQA_PROMPT, vqa_instruction),
    "open-vqa": (OPEN_VQA_PROMPT, open_vqa_instruction),
}


def pinned_instruction(sample) -> str:
    """The text a sample is benchmarked with under the pinned protocol (no OCR tokens)."""
    prompt, build = INSTRUCTIONS[sample.task]
    return build(sample, prompt, False)
