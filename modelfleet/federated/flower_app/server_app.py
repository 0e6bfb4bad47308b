"""The ServerApp: FedAvg over the clients' LoRA adapters, a round log, the final adapter.

Flower's FedAvg does the averaging (all clients share one rank here). The strategy's
metric aggregation hooks see every reply of a round, which is where the journal learns
which clients reported; it appends each finished round to ``rounds.jsonl`` at once, so a
watcher sees rounds as they complete rather than at the end.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from modelfleet.federated.flower_app.settings import parse_run_config
from modelfleet.federated.lora import attach_lora, read_adapter, write_adapter
from modelfleet.federated.round_log import ADAPTER_DIR, ROUNDS_FILE, RoundRecord
from modelfleet.zoo import load_model

PARTITION_KEY = "partition-id"
"""Metric each client reports to identify itself; an identity, so never averaged."""

app = ServerApp()


def _average(records: list[RecordDict], weighting_key: str) -> tuple[MetricRecord, list[int]]:
    """The weighted mean of the replies' metrics, and the partition ids that replied."""
    partitions = [
        int(metrics[PARTITION_KEY])
        for record in records
        for metrics in record.metric_records.values()
    ]
    mean = aggregate_metricrecords(records, weighting_key)
    del mean[PARTITION_KEY]
    return mean, sorted(partitions)


class RoundJournal:
    """Pairs each round's training and evaluation replies into one ``RoundRecord`` line.

    FedAvg calls the training hook, then the evaluation hook, once per round, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.round = 0
        self.train: tuple[MetricRecord, list[int]] | None = None
        path.write_text("")

    def record_train(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """FedAvg's ``train_metrics_aggr_fn``: average, and hold until evaluation."""
        self.train = _average(records, weighting_key)
        return self.train[0]

    def record_evaluate(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """FedAvg's ``evaluate_metrics_aggr_fn``: average, and append the round's line."""
        if self.train is None:
            raise RuntimeError("evaluation replies arrived before any training replies")
        evaluated, evaluators = _average(records, weighting_key)
        trained, trainers = self.train
        self.round += 1
        record = RoundRecord(
            round=self.round,
            train_clients=tuple(trainers),
            evaluate_clients=tuple(evaluators),
            train_loss=float(trained["loss"]),
            eval_loss=float(evaluated["loss"]),
            eval_accuracy=float(evaluated["accuracy"]),
        )
        with self.path.open("a") as handle:
            handle.write(record.to_line())
        self.train = None
        return evaluated


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` of FedAvg from a fresh adapter; save the final one."""
    run = parse_run_config(context.run_config)
    if run.output_dir is None:
        raise ValueError("run config 'output-dir' is empty; the launcher sets it per run")
    run.output_dir.mkdir(parents=True, exist_ok=True)
    base, _ = load_model(run.base_model)
    model = attach_lora(base, run.lora)
    journal = RoundJournal(run.output_dir / ROUNDS_FILE)
    strategy = FedAvg(
        min_train_nodes=run.min_clients,
        min_evaluate_nodes=run.min_clients,
        min_available_nodes=run.min_clients,
        train_metrics_aggr_fn=journal.record_train,
        evaluate_metrics_aggr_fn=journal.record_evaluate,
    )
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(read_adapter(model)), num_rounds=run.rounds
    )
    write_adapter(model, result.arrays.to_torch_state_dict())
    model.save_pretrained(str(run.output_dir / ADAPTER_DIR))
