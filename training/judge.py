"""``rlver-judge``: fit the learned appraiser on the graded corpus, and validate it.

    rlver-judge train                 # the shipped weights, from the train personas' rows
    rlver-judge train --dev 8         # hold out 8 train personas to choose settings on
    rlver-judge validate              # the table of docs/benchmarks.md ("The learned judge")
    rlver-judge agreement             # the blind second labels against the first

Training is transformers' ``Trainer`` on the top encoder layers, the pooler and a one-output
regression head of the packaged all-MiniLM-L6-v2 (the lower layers stay as packaged), mean
squared error on change / 10. The frozen lower layers run once per row before the first step,
and every step runs the trained layers on their cached outputs (without dropout below the
trained layers). Only the trained tensors are saved, in float16. It is
deterministic (one seed for data order, initialisation and dropout; deterministic kernels) and
runs on the CPU. The validation rows (test personas) are read only by ``validate``, never by
``train``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from pydantic import BaseModel, Field, field_validator
from rich.console import Console
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput

from rlver_agents.appraisers.corpus import CorpusRow, corpus_path, load_corpus
from rlver_agents.appraisers.learned_appraiser import (
    SCALE,
    WEIGHTS_FILE,
    bundled_weights_path,
    encode_pairs,
    judge_pair,
    load_base_model,
    trained_prefixes,
)
from rlver_agents.personas import Persona, load_split

ENCODER_LAYERS = 6
"""all-MiniLM-L6-v2's encoder depth."""

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


class JudgeTrainConfig(BaseModel):
    """The settings of a judge fit; recorded beside the weights it made."""

    seed: int = 0
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(1.5e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    layers: tuple[int, ...] = Field(
        (3, 4, 5),
        description="Encoder layers that are trained (with the pooler and the head); the "
        "others keep the packaged weights, so only these ship.",
    )
    threads: int | None = Field(None, ge=1, description="torch threads; all cores if None.")
    bf16: bool = Field(
        True,
        description="Run the steps under bfloat16 autocast (float32 weights and optimizer): "
        "0.75x the time of float32 on held-out train personas, with the same fit "
        "(docs/benchmarks.md, 'Fitting it').",
    )

    @field_validator("layers")
    @classmethod
    def _encoder_layers(cls, layers: tuple[int, ...]) -> tuple[int, ...]:
        """all-MiniLM-L6-v2 has six encoder layers, 0 to 5."""
        if not layers or any(not 0 <= i < ENCODER_LAYERS for i in layers):
            raise ValueError(f"layers must be encoder layers 0..{ENCODER_LAYERS - 1}, got {layers}")
        return layers


def _examples(rows: Sequence[CorpusRow], personas: dict[str, Persona]) -> list[tuple[str, str]]:
    """The pairs the judge reads for ``rows``: the same function scores them at run time."""
    return [judge_pair(personas[r.persona_id], r.history, r.reply) for r in rows]


class _UpperStack(nn.Module):
    """What a fit trains, run on cached outputs of the frozen layers below it.

    The encoder layers below the lowest trained one never change during a fit, so their
    outputs are computed once (:func:`_frozen_outputs`) instead of at every step of every
    epoch. This module holds the model's own layers from there up, its pooler, dropout and
    head (the same parameters, so training it trains the model) and computes the loss of
    ``BertForSequenceClassification`` for one-output regression.
    """

    def __init__(self, model: Any, first_layer: int) -> None:
        super().__init__()
        self.config = model.config
        self.layers = nn.ModuleList(model.bert.encoder.layer[first_layer:])
        self.pooler = model.bert.pooler
        self.dropout = model.dropout
        self.classifier = model.classifier

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask)
        logits = self.classifier(self.dropout(self.pooler(hidden_states)))
        loss = None
        if labels is not None:
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _frozen_outputs(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], layers: int, batch_size: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each pair's token ids and its hidden states after the embeddings and the first
    ``layers`` encoder layers, computed without dropout, unpadded; batched by length."""
    encoded = [encode_pairs(tokenizer, [pair])["input_ids"][0] for pair in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i]))
    states: dict[int, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():  # not inference mode: the trained layers take these as inputs
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = encode_pairs(tokenizer, [pairs[i] for i in chunk])
            hidden = model.bert.embeddings(
                input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"]
            )
            mask = create_bidirectional_mask(
                config=model.config, inputs_embeds=hidden, attention_mask=batch["attention_mask"]
            )
            for layer in model.bert.encoder.layer[:layers]:
                hidden = layer(hidden, attention_mask=mask)
            for row, i in enumerate(chunk):
                states[i] = hidden[row, : len(encoded[i])].clone()
    return [(encoded[i], states[i]) for i in range(len(pairs))]


class _CachedDataset:
    """The pairs' token ids (for grouping by length), frozen-layer outputs and targets."""

    def __init__(self, cached: list[tuple[torch.Tensor, torch.Tensor]], targets: list[float]):
        self._items = [
            {"input_ids": ids, "hidden_states": states, "labels": target}
            for (ids, states), target in zip(cached, targets, strict=True)
        ]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._items[index]


def _collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pads the cached hidden states of a batch and masks the padding."""
    longest = max(f["hidden_states"].shape[0] for f in features)
    width = features[0]["hidden_states"].shape[1]
    hidden = torch.zeros(len(features), longest, width)
    mask = torch.zeros(len(features), longest, dtype=torch.long)
    for row, feature in enumerate(features):
        length = feature["hidden_states"].shape[0]
        hidden[row, :length] = feature["hidden_states"]
        mask[row, :length] = 1
    labels = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
    return {"hidden_states": hidden, "attention_mask": mask, "labels": labels}


def corpus_digest(path: Path) -> str:
    """A short digest of a corpus file, recorded beside the judge fitted on it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fit(
    rows: Sequence[CorpusRow],
    personas: dict[str, Persona],
    config: JudgeTrainConfig,
    output_dir: Path,
) -> Path:
    """Fit the judge on ``rows`` and save its trained tensors (with ``judge.json``) in
    ``output_dir``."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import Trainer, TrainingArguments, set_seed

    if config.threads:
        torch.set_num_threads(config.threads)
    set_seed(config.seed, deterministic=True)
    model, tokenizer = load_base_model()
    trained = trained_prefixes(config.layers)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(trained)
    started = time.monotonic()
    first = min(config.layers)
    cached = _frozen_outputs(model, tokenizer, _examples(rows, personas), first)
    dataset = _CachedDataset(cached, [r.change / SCALE for r in rows])
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size,
            warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the steps
            weight_decay=config.weight_decay,
            lr_scheduler_type="linear",
            seed=config.seed,
            data_seed=config.seed,
            full_determinism=True,
            use_cpu=True,
            bf16=config.bf16,
            save_strategy="no",
            logging_steps=25,
            report_to=[],
            dataloader_num_workers=0,
            train_sampling_strategy="group_by_length",
            disable_tqdm=False,
        )
        trainer = Trainer(
            model=_UpperStack(model, first),
            args=args,
            train_dataset=dataset,  # type: ignore[arg-type]
            data_collator=_collate,
        )
        trainer.train()
    seconds = time.monotonic() - started
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = {
        name: parameter.detach().to(torch.float16).contiguous()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }
    save_file(weights, str(output_dir / WEIGHTS_FILE), metadata={"base": "all-MiniLM-L6-v2"})
    (output_dir / "judge.json").write_text(
        json.dumps(
            {
                "config": config.model_dump(mode="json"),
                "rows": len(rows),
                "personas": len({r.persona_id for r in rows}),
                "corpus_sha256": corpus_digest(corpus_path("train")),
                "train_seconds": round(seconds, 1),
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
        + "\n"
    )
    return output_dir


@app.command()
def train(
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Where the weights go; the package's by default."),
    ] = None,
    dev: Annotated[
        int,
        typer.Option(
            "--dev",
            help="Hold out this many train personas (the last ones) and report the fit on "
            "them: for choosing settings without the validation rows.",
        ),
    ] = 0,
    epochs: Annotated[float | None, typer.Option("--epochs")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate")] = None,
    threads: Annotated[int | None, typer.Option("--threads")] = None,
    layers: Annotated[
        list[int] | None,
        typer.Option("--layer", help="An encoder layer to train (repeat it); 3, 4, 5 if unset."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    bf16: Annotated[
        bool | None,
        typer.Option("--bf16/--no-bf16", help="bfloat16 autocast for the steps (the default)."),
    ] = None,
) -> None:
    """Fit the judge on the train personas' corpus rows."""
    overrides: dict[str, Any] = {"seed": seed}
    if layers:
        overrides["layers"] = tuple(sorted(set(layers)))
    for name, value in (
        ("epochs", epochs),
        ("learning_rate", learning_rate),
        ("threads", threads),
        ("bf16", bf16),
    ):
        if value is not None:
            overrides[name] = value
    config = JudgeTrainConfig(**overrides)
    personas = {p.id: p for p in load_split("train")}
    rows = load_corpus("train")
    held: list[CorpusRow] = []
    if dev:
        names = sorted(personas)[-dev:]
        held = [r for r in rows if r.persona_id in names]
        rows = [r for r in rows if r.persona_id not in names]
    if output_dir is None:
        if dev:
            raise typer.BadParameter(
                "--dev needs --output-dir (the shipped weights are not a trial)"
            )
        output_dir = bundled_weights_path()
    console.print(f"fitting on {len(rows)} rows of {len({r.persona_id for r in rows})} personas")
    fit(rows, personas, config, output_dir)
    console.print(f"weights written to {output_dir}")
    if held:
        from training.judge_report import agreement, predict_rows

        predicted = predict_rows(held, personas, weights_path=output_dir)
        console.print(agreement(held, predicted).render(f"dev: {dev} held-out train personas"))


@app.command()
def validate(
    weights_path: Annotated[Path | None, typer.Option("--weights-path")] = None,
    embedding: Annotated[
        bool, typer.Option("--embedding/--no-embedding", help="Also score the embedding appraiser.")
    ] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")] = None,
) -> None:
    """The validation table on the test personas' rows, for the learned judge and beside it
    the embedding appraiser."""
    from training.judge_report import validation_report

    report = validation_report(weights_path=weights_path, with_embedding=embedding)
    typer.echo(report.render())
    if json_out is not None:
        json_out.write_text(report.model_dump_json(indent=2) + "\n")


@app.command()
def agreement() -> None:
    """How the blind second labels of a random 10% of the corpus agree with the first."""
    from training.judge_report import label_agreement

    typer.echo(label_agreement().render())


if __name__ == "__main__":
    app()
