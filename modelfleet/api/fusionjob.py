"""FusionJob: fuse several heterogeneous source LLMs into one target model."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from modelfleet.api.common import (
    CPU_TYPE,
    ApiModel,
    Artifact,
    BaseStatus,
    GpuRequest,
    Name,
    StatusModel,
    Uri,
    list_map,
    require_unique,
)
from modelfleet.api.fedjob import ModelFamily, Output
from modelfleet.api.pods import Pod


class FusionSource(ApiModel):
    """A source model whose knowledge is fused into the target."""

    name: Name
    uri: Uri
    weight: float = Field(
        default=1.0, gt=0, le=1e6, description="Relative weight of this source. Default: 1."
    )


class Architecture(ApiModel):
    """The target's size: what training placement plans memory and compute for."""

    layers: int = Field(ge=1, le=1024, description="Transformer layers.")
    hidden_size: int = Field(ge=16, le=131072, description="Model width.")
    parameters_billions: float = Field(gt=0, le=10000, description="Parameters, in billions.")


class FusionTarget(ApiModel):
    """The model that receives the fused knowledge."""

    uri: Uri = Field(description="The model trained (distill) or the merge's architecture.")
    family: ModelFamily = Field(
        default=ModelFamily.LLAMA,
        description="Llama, Mistral, Qwen, GPT2 or Tiny. Default: Llama.",
    )
    architecture: Architecture | None = Field(
        default=None,
        description="Needed to place training on GPUs across nodes: with it the operator "
        "picks tensor/pipeline/data/sequence-parallel degrees and nodes, NIC-aware.",
    )


class FusionMethod(StrEnum):
    DISTILL = "Distill"
    MERGE = "Merge"


class MergeStrategy(StrEnum):
    SOUP = "Soup"
    TASK_ARITHMETIC = "TaskArithmetic"
    TIES = "TIES"
    BREADCRUMBS = "Breadcrumbs"


class Merge(ApiModel):
    """Weight-space merging; all sources must share the target's architecture."""

    strategy: MergeStrategy = Field(
        default=MergeStrategy.SOUP,
        description="Soup, TaskArithmetic, TIES or Breadcrumbs. Default: Soup.",
    )
    base_uri: Uri | None = Field(
        default=None,
        description="The common starting point; needed by TaskArithmetic, TIES, Breadcrumbs.",
    )
    density: float = Field(
        default=1.0, gt=0, le=1, description="Share of task-vector entries kept. Default: 1."
    )
    scale: float = Field(default=1.0, gt=0, le=10, description="Task-vector scale. Default: 1.")


class TokenAlignment(StrEnum):
    MINIMUM_EDIT = "MinimumEdit"
    EXACT = "Exact"


class Distill(ApiModel):
    """Distillation across vocabularies (FuseLLM-style), optionally followed by DPO."""

    alignment: TokenAlignment = Field(
        default=TokenAlignment.MINIMUM_EDIT,
        description="How source tokens map to target tokens: MinimumEdit or Exact. "
        "Default: MinimumEdit.",
    )
    temperature: float = Field(default=1.0, gt=0, le=100, description="Default: 1.")
    top_k: int = Field(default=10, ge=1, le=1024, description="Source logits kept per token.")
    preference_optimization: bool = Field(
        default=False, description="Run DPO after distillation. Default: false."
    )


DomainName = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class SyntheticData(ApiModel):
    """Samples generated over a set of domains instead of a fixed dataset."""

    domains: list[DomainName] = Field(
        min_length=1, max_length=256, description="Domains to generate for, e.g. math, code."
    )
    samples: int = Field(default=1000, ge=1, le=10_000_000, description="Default: 1000.")


class FusionData(ApiModel):
    """Training data: a dataset URI or synthetic samples over domains; exactly one."""

    uri: Uri | None = None
    synthetic: SyntheticData | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.uri is None) == (self.synthetic is None):
            raise ValueError("spec.data: set exactly one of uri or synthetic")
        return self


class SequenceParallelMode(StrEnum):
    AUTO = "Auto"
    FIXED = "Fixed"


class SequenceParallel(ApiModel):
    """How sequences are split across devices during training."""

    mode: SequenceParallelMode = Field(
        default=SequenceParallelMode.AUTO,
        description="Auto plans SP groups per step from sequence lengths; Fixed uses degree. "
        "Default: Auto.",
    )
    degree: int | None = Field(default=None, ge=1, le=1024, description="With mode Fixed.")

    @model_validator(mode="after")
    def _degree_with_fixed(self) -> Self:
        if self.mode is SequenceParallelMode.FIXED and self.degree is None:
            raise ValueError("spec.training.sequenceParallel.degree is required with mode Fixed")
        return self


class Training(ApiModel):
    """Optimisation settings of the distillation run."""

    epochs: int = Field(default=1, ge=1, le=1000, description="Default: 1.")
    learning_rate: float = Field(default=2e-5, gt=0, le=1, description="Default: 2e-5.")
    zero_stage: int = Field(default=2, ge=0, le=3, description="DeepSpeed ZeRO stage.")
    sequence_parallel: SequenceParallel = Field(default_factory=SequenceParallel)
    max_seq_len: int = Field(default=4096, ge=16, le=1_048_576, description="Default: 4096.")
    global_batch_size: int = Field(
        default=64, ge=1, le=1_000_000, description="Sequences per optimiser step. Default: 64."
    )
    micro_batch_size: int = Field(
        default=1, ge=1, le=1024, description="Sequences per pipeline micro-batch. Default: 1."
    )

    @model_validator(mode="after")
    def _batches_divide(self) -> Self:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"spec.training.globalBatchSize={self.global_batch_size} must be a multiple of "
                f"microBatchSize={self.micro_batch_size}"
            )
        return self


class FusionJobSpec(ApiModel):
    """The desired fusion run."""

    sources: list[FusionSource] = Field(
        min_length=1,
        max_length=16,
        description="The models to fuse, 1 to 16.",
        json_schema_extra=list_map("name"),
    )
    target: FusionTarget = Field(description="The model that receives the fused knowledge.")
    method: FusionMethod = Field(
        default=FusionMethod.DISTILL, description="Distill or Merge. Default: Distill."
    )
    merge: Merge | None = Field(default=None, description="Settings with method Merge.")
    distill: Distill = Field(default_factory=Distill, description="Settings with method Distill.")
    data: FusionData | None = Field(default=None, description="Needed with method Distill.")
    training: Training = Field(default_factory=Training)
    resources: list[GpuRequest] = Field(
        default_factory=lambda: [GpuRequest(gpu_type=CPU_TYPE, count=0)],
        min_length=1,
        max_length=16,
        description="GPUs the job may use, by type. Default: CPU only.",
        json_schema_extra=list_map("gpuType"),
    )
    output: Output = Field(description="Where the fused model is written.")
    pod: Pod = None

    @model_validator(mode="after")
    def _check_method(self) -> Self:
        names = [source.name for source in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"spec.sources: names must be unique; got {names}")
        require_unique("spec.resources", "gpuType", [r.gpu_type for r in self.resources])
        if self.method is FusionMethod.MERGE:
            merge = self.merge or Merge()
            if merge.strategy is not MergeStrategy.SOUP and merge.base_uri is None:
                raise ValueError(
                    f"spec.merge.baseUri is required with strategy {merge.strategy.value}: "
                    f"task vectors are differences from the common base model"
                )
        elif self.data is None:
            raise ValueError("spec.data is required with method Distill (uri or synthetic)")
        return self


class PlacementGroup(StatusModel):
    """GPUs the plan uses on one node, and the pipeline layers they hold."""

    node: str = Field(max_length=253, description="Node name.")
    gpu_type: str = Field(max_length=63, description="GPU product.")
    domain: str = Field(max_length=253, description="RDMA island, or the node if Ethernet-only.")
    gpus: int = Field(ge=0, description="GPUs used on the node.")
    stages: list[int] = Field(default_factory=list, max_length=1024, description="Stages held.")


class PlacementSummary(StatusModel):
    """The training layout the operator planned, and what it expects a step to cost."""

    strategy: str = Field(max_length=63, description="How ranks were placed, e.g. nic-aware.")
    layout: str = Field(max_length=63, description="Parallel degrees, e.g. tp8 pp2 dp1 sp1.")
    gpus: int = Field(ge=0, description="GPUs in the layout.")
    expected_step_seconds: float = Field(ge=0, description="Predicted time of one step.")
    layers_per_stage: list[int] = Field(
        default_factory=list, max_length=1024, description="Pipeline layers by stage."
    )
    groups: list[PlacementGroup] = Field(
        default_factory=list, max_length=1024, description="Per-node assignment."
    )


class FusionJobStatus(BaseStatus):
    """What the operator observed of the run."""

    progress: float = Field(default=0.0, ge=0, le=1, description="Share of the work done.")
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=32, description="Latest metrics, e.g. trainLoss."
    )
    artifacts: list[Artifact] = Field(
        default_factory=list, max_length=64, description="What the job has produced."
    )
    workload: str = Field(default="", max_length=253, description="Name of the child workload.")
    placement: PlacementSummary | None = Field(
        default=None, description="The planned layout; absent for CPU-only jobs."
    )
