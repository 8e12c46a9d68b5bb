"""python -m training.eval.image_dependence --model resources/models/rsa-default [--count 32] [--split val]

Does an RSA checkpoint look at its images? Three quick checks on held-out Synthetic Earth scenes
(seeds disjoint from training, rendered like the training recipe's scenes):

- **LM loss, right vs shuffled images**: the answer-token cross-entropy of each scene's first
  caption (and of its first question's answer) with its own image, and with the images rotated
  by one across the samples. A model that uses the image has a clearly lower loss with the right
  image (``gap`` = shuffled - right > 0); a model that ignores it has a gap of about 0.
- **Visual-token spread**: the std of the projected visual tokens (``encode_images().tokens``)
  across images, per token position and channel, over their overall std. Near 0: the tokens are
  (almost) the same vector whatever the image. Also the tokens' RMS next to the text embeddings'
  RMS (the scale the LM expects).
- **Change head**: the changed/unchanged accuracy of ``change_logits`` on ``count / 2`` pairs
  (every other one changed), from one forward pass, no generation.

Prints the figures and, with ``--out``, writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rs_assistant.core.protocol import Task
from rs_assistant.engine.models.rsa import RSAForConditionalGeneration, RSAProcessor
from training.data.synthetic import generate_pair, generate_scene, split_seeds
from training.recipes.default.dataset import scene_gsd


def answer_losses(
    model: RSAForConditionalGeneration, processor: RSAProcessor, texts: list[str], images: list[np.ndarray]
) -> torch.Tensor:
    """The mean answer-token cross-entropy of each sample ``[n]``."""
    batch = processor(texts, images, return_labels=True)
    out = model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
    )
    labels = batch["labels"][:, 1:]
    per_token = F.cross_entropy(out.logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counted = (labels != -100).float()
    return (per_token * counted).sum(1) / counted.sum(1).clamp(min=1)


@torch.no_grad()
def measure(
    model_dir: Path, count: int = 32, split: str = "val", scene_size: int = 256, threads: int = 2, batch_size: int = 16
) -> dict[str, float]:
    torch.set_num_threads(threads)
    model = RSAForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = RSAProcessor.from_pretrained(model_dir)
    scenes = [
        generate_scene(s, size=scene_size, gsd=scene_gsd(s, scene_size, 384, 768)) for s in split_seeds(split, count)
    ]
    images = [s.image for s in scenes]
    shuffled = images[1:] + images[:1]
    results: dict[str, float] = {"count": count}
    for name, texts in (
        ("caption", [processor.format_prompt(Task.CAPTION, answer=s.captions[0]) for s in scenes]),
        ("qa", [processor.format_prompt(Task.CHAT, s.qa[0].question, answer=s.qa[0].answer) for s in scenes]),
    ):
        right, wrong = [], []
        for i in range(0, count, batch_size):
            right.append(answer_losses(model, processor, texts[i : i + batch_size], images[i : i + batch_size]))
            wrong.append(answer_losses(model, processor, texts[i : i + batch_size], shuffled[i : i + batch_size]))
        right_t, wrong_t = torch.cat(right), torch.cat(wrong)
        results[f"{name}_loss_right"] = float(right_t.mean())
        results[f"{name}_loss_shuffled"] = float(wrong_t.mean())
        results[f"{name}_gap"] = float((wrong_t - right_t).mean())
        results[f"{name}_right_lower_fraction"] = float((right_t < wrong_t).float().mean())

    pixels = processor([processor.format_prompt(Task.CAPTION)] * count, images)["pixel_values"]
    tokens = torch.cat([model.encode_images(pixels[i : i + batch_size]).tokens for i in range(0, count, batch_size)])
    results["token_std_across_images"] = float(tokens.std(dim=0).mean())
    results["token_std_overall"] = float(tokens.std())
    results["token_spread_ratio"] = results["token_std_across_images"] / results["token_std_overall"]
    results["token_rms"] = float(tokens.pow(2).mean().sqrt())
    results["text_embedding_rms"] = float(model.get_input_embeddings().weight.pow(2).mean().sqrt())

    pairs = [
        generate_pair(s, size=scene_size, gsd=scene_gsd(s, scene_size, 384, 768), changed=i % 2 == 1)
        for i, s in enumerate(split_seeds(split, max(2, count // 2)))
    ]
    labels, logits = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = processor(
            [processor.format_prompt(Task.CHANGE, pair=True)] * len(chunk),
            [(p.before.image, p.after.image) for p in chunk],
        )
        logits.append(model.encode_images(batch["pixel_values"]).change_logits)
        labels.extend(p.changed for p in chunk)
    predicted = torch.cat(logits) > 0
    results["change_accuracy"] = float((predicted == torch.tensor(labels)).float().mean())
    results["change_logit_std"] = float(torch.cat(logits).std())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an RSA checkpoint folder")
    parser.add_argument("--count", type=int, default=32, help="held-out scenes (and count/2 pairs)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2 (the shuffled images need another sample)")
    results = measure(args.model, args.count, args.split, threads=args.threads)
    for key, value in results.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
