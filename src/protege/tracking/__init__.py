"""MLflow tracking: one parent run per pipeline run, one nested run per phase, lineage to the registry.

The only module that imports mlflow (I/O at the edges); mlflow is imported lazily so `protege --help`
and modules that merely import this one stay fast. Telemetry is off.

- `Tracker.start_pipeline` opens the parent run and logs the flattened config as params (values
  truncated to `tracking.param_value_max_chars`, batches of MLflow's 100) plus `config.json`.
  KFP steps run in separate processes: pass `parent_env()` (`PROTEGE_PARENT_RUN_ID`) to them, and
  `start_pipeline` re-attaches to that run instead of opening a new one.
- `Tracker.phase("sft")` is a nested run named after the phase (synth, sft, rl1, rl2, eval, register);
  it ends FINISHED, or FAILED when the block raises.
- Datasets are logged as run inputs with a digest (`log_dataset`), checkpoints as EXTERNAL
  LoggedModels whose tag `protege.checkpoint_uri` holds their s3:// URI (`log_checkpoint`; never the
  transformers flavor, which is broken with transformers 5), and `register` versions a LoggedModel
  in the registry with lineage tags and aliases (`find_checkpoint`: the phase's own model for a URI, so the
  registered version is the trained model itself). `link_model` tags the pipeline run with each phase's final
  model. Agent episodes become MLflow traces (`log_trace`, specs from protege.tracking.traces) linked to their run.

Faults: a call whose answer is needed (runs, models, the registry) is retried while the server is
unreachable or answers 5xx (`tracking.retry_attempts`, backoff capped at `tracking.retry_backoff_max_s`),
then raises `TrackingError`. Calls that only record (metrics, params, tags, datasets, artifacts, checkpoint
models) never stop a phase: when the server is down they are buffered in order and flushed once it answers
again; closing a phase run flushes the buffer (for up to `tracking.flush_timeout_s`) before marking the run
FINISHED, and fails naming what is pending (the run then ends FAILED) when the server never comes back.
Buffered calls are kept as data and spooled to `tracking.spool_dir`; a Tracker for the same server and
experiment adopts spool files that a dead process left and sends them first.

Note: `mlflow.create_external_model` and `mlflow.register_model` use the process-wide tracking URI,
so `Tracker(cfg)` sets it (one tracking server per process).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from protege.config import TrackingConfig, flatten, public_dict

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import DatasetInput, LoggedModel, Run
    from mlflow.entities.model_registry import ModelVersion

PHASES = ("synth", "sft", "rl1", "rl2", "eval", "register")
PARENT_RUN_ENV = "PROTEGE_PARENT_RUN_ID"
TAG_PHASE = "protege.phase"
TAG_PIPELINE_RUN = "protege.pipeline_run_id"
TAG_CONFIG_DIGEST = "protege.config_digest"
TAG_CHECKPOINT_URI = "protege.checkpoint_uri"
TAG_MODEL_ID = "protege.model_id"
TAG_SOURCE_RUN = "protege.source_run_id"
TAG_ADOPTED_FROM = "protege.adopted_from_run_id"
TAG_VARIANT = "protege.variant"
"""On a comparison's child run (protege.compare): the variant it measured."""
TAG_COMPARISON = "protege.comparison"
"""On a comparison run (protege.compare): the digest of the task set it compared on."""
_PARENT_TAG = "mlflow.parentRunId"  # how MLflow nests runs
_TRUNCATED = "...[truncated]"

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """A tracking call failed or was misused; the message names the run, phase or model."""


class TrackingUnavailable(TrackingError):
    """The server was unreachable (or answered 5xx) through every attempt; the call may succeed later."""


def _mlflow() -> Any:
    # Set before the first import: mlflow reads these when it starts its telemetry client.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    return mlflow


@dataclass(frozen=True)
class PhaseRun:
    """A phase's nested run."""

    run_id: str
    phase: str
    parent_run_id: str


class Tracker:
    """Talks to one MLflow server for one experiment."""

    def __init__(self, cfg: TrackingConfig) -> None:
        mlflow = _mlflow()
        # MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) wait minutes on a dead server.
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(cfg.request_timeout_s)
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.request_max_retries)
        # Traces are sent when log_trace's call runs, so a failure is buffered like any other record
        # (MLflow's background queue would drop it with a warning).
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
        mlflow.set_tracking_uri(cfg.uri)
        mlflow.set_registry_uri(cfg.uri)
        self.cfg = cfg
        self.client = mlflow.MlflowClient(tracking_uri=cfg.uri, registry_uri=cfg.uri)
        self._pending: list[tuple[str, str, dict[str, Any]]] = []
        """Recording calls buffered while the server was down, oldest first: (what, kind, fields)."""
        self._pending_lock = threading.RLock()
        self._last_probe = 0.0
        self._spool: Any = None
        self._adopt_spools()
        self.experiment_id = self._call(f"experiment '{cfg.experiment}'", self._experiment_id)
        self.parent_run_id: str | None = None

    # ---- pipeline and phase runs ------------------------------------------------------------------

    def start_pipeline(
        self,
        run_name: str,
        config: BaseModel | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Open the pipeline's parent run, or re-attach to `parent_run_id` / `$PROTEGE_PARENT_RUN_ID`
        (then nothing is logged again: params are immutable in MLflow). Returns the run id."""
        existing = parent_run_id or os.environ.get(PARENT_RUN_ENV)
        if existing:
            run = self.get_run(existing)
            if run.info.experiment_id != self.experiment_id:
                raise TrackingError(
                    f"parent run {existing} belongs to experiment {run.info.experiment_id}, "
                    f"not '{self.cfg.experiment}' ({self.experiment_id})"
                )
            self.parent_run_id = existing
            return existing
        run = self._call(
            f"new pipeline run '{run_name}'",
            lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {})),
        )
        self.parent_run_id = run.info.run_id
        if config is not None:
            self.log_config(self.parent_run_id, config)
        return self.parent_run_id

    def ensure_pipeline(self, run_name: str, config: BaseModel | None = None) -> str:
        """The pipeline run this tracker is in, started (or re-attached, see start_pipeline) when it is in
        none yet: a phase run on its own (`protege sft ...`) opens its pipeline run itself."""
        if self.parent_run_id is None:
            self.start_pipeline(run_name, config)
        return str(self.parent_run_id)

    def parent_env(self) -> dict[str, str]:
        """Env for a child process (a KFP step) so its Tracker re-attaches to this pipeline run."""
        return {PARENT_RUN_ENV: self._require_parent()}

    def end_pipeline(self, status: str = "FINISHED") -> None:
        """Close the parent run with FINISHED, FAILED or KILLED."""
        self.end_run(self._require_parent(), status)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close any run of this experiment with FINISHED, FAILED or KILLED."""
        self._call(f"end run {run_id}", lambda: self.client.set_terminated(run_id, status=status))

    def runs_tagged(self, key: str, value: str) -> list[Run]:
        """The runs of this experiment whose tag `key` equals `value`."""
        return self._call(
            f"runs with {key} = {value}",
            lambda: list(
                self.client.search_runs([self.experiment_id], filter_string=f"tags.`{key}` = '{value}'")
            ),
        )

    @contextmanager
    def phase(
        self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[PhaseRun]:
        """A nested run named `name` under the pipeline run; FAILED if the block raises."""
        if name not in PHASES:
            raise TrackingError(f"unknown phase '{name}' (phases: {', '.join(PHASES)})")
        with self.child(name, params, {TAG_PHASE: name, **dict(tags or {})}) as run:
            yield run

    @contextmanager
    def child(
        self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[PhaseRun]:
        """A nested run named `name` under the pipeline run (a phase, or a variant of a comparison run);
        FAILED if the block raises."""
        parent = self._require_parent()
        run_tags = {_PARENT_TAG: parent, TAG_PIPELINE_RUN: parent, **dict(tags or {})}
        run = self._call(
            f"phase run '{name}' under {parent}",
            lambda: self.client.create_run(self.experiment_id, run_name=name, tags=run_tags),
        )
        current = PhaseRun(run.info.run_id, name, parent)
        if params:
            self.log_params(current.run_id, params)
        try:
            yield current
        except BaseException:
            self._end_failed(current.run_id, name)
            raise
        try:
            self.flush()
        except TrackingError:
            self._end_failed(current.run_id, name)
            raise
        self._call(f"end phase run '{name}'", lambda: self.client.set_terminated(current.run_id, "FINISHED"))

    def _end_failed(self, run_id: str, name: str) -> None:
        """Mark a phase run FAILED, flushing what is buffered first; never masks the error being raised."""
        try:
            self.flush()
        except TrackingError as err:
            log.warning("tracking: phase run '%s' ends with buffered calls not logged: %s", name, err)
        try:
            self._call(f"end phase run '{name}'", lambda: self.client.set_terminated(run_id, status="FAILED"))
        except TrackingError as err:
            log.warning("tracking: could not mark phase run '%s' (%s) FAILED: %s", name, run_id, err)

    # ---- params, metrics, tags --------------------------------------------------------------------

    def log_config(self, run_id: str, config: BaseModel) -> None:
        """Flattened config (secrets masked) as params, the full config as `config.json`, its digest as a tag."""
        data = public_dict(config)
        self.log_params(run_id, flatten(data))
        digest = config.digest() if hasattr(config, "digest") else None
        if digest:
            self.set_tags(run_id, {TAG_CONFIG_DIGEST: digest})
        self._record(
            f"config.json of run {run_id}",
            "log_dict",
            run_id=run_id,
            dictionary=data,
            artifact_file="config.json",
        )

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        items = [Param(key, self._param_value(value)) for key, value in params.items()]
        for batch in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._record(f"params of run {run_id}", "log_batch", run_id=run_id, params=batch)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now_ms = int(time.time() * 1000)
        items = [Metric(key, float(value), now_ms, step or 0) for key, value in metrics.items()]
        for batch in _chunks(items, MAX_METRICS_PER_BATCH):
            self._record(f"metrics of run {run_id}", "log_batch", run_id=run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for batch in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._record(f"tags of run {run_id}", "log_batch", run_id=run_id, tags=batch)

    def log_artifacts(self, run_id: str, local_path: str | os.PathLike[str], artifact_path: str = "") -> None:
        """A file or a directory tree (report files, plots) as artifacts of the run under `artifact_path`."""
        path = os.path.abspath(os.fspath(local_path))
        kind = "log_artifacts" if os.path.isdir(path) else "log_artifact"
        self._record(
            f"artifact {path} of run {run_id}", kind, run_id=run_id, local=path, to=artifact_path or None
        )

    # ---- lineage: datasets, checkpoints, registry -------------------------------------------------

    def log_dataset(
        self,
        run_id: str,
        name: str,
        source: str,
        digest: str | None = None,
        df: pd.DataFrame | None = None,
        context: str = "training",
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Record a dataset (at `source`, e.g. an s3:// URI) as an input of the run; returns its digest.

        With `df` MLflow also stores its schema and profile; without it the dataset is metadata only and
        `digest` is required (e.g. the sha256 of the upload's MANIFEST.json).
        """
        mlflow = _mlflow()
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if df is not None:
            dataset = mlflow.data.from_pandas(df, source=source, name=name, digest=digest)
        elif digest:
            dataset = MetaDataset(source=_dataset_source(source), name=name, digest=digest)
        else:
            raise TrackingError(f"dataset '{name}' ({source}): give a digest or a DataFrame")
        input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)] + [
            InputTag(k, str(v)) for k, v in (tags or {}).items()
        ]
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=input_tags)
        self._record(f"dataset '{name}' of run {run_id}", "log_inputs", run_id=run_id, datasets=[entry])
        return dataset.digest

    def log_checkpoint(
        self,
        run_id: str,
        name: str,
        uri: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        model_type: str = "agent",
        wait: bool = False,
    ) -> str | None:
        """An EXTERNAL LoggedModel for the checkpoint stored at `uri` (s3://...); returns its model_id, or
        None when the server is down and the model is buffered (it is created when the buffer flushes).
        `wait=True`: flush the buffer first and retry until the model exists (TrackingError if it cannot)."""
        model_tags = {TAG_CHECKPOINT_URI: uri, TAG_SOURCE_RUN: run_id, **dict(tags or {})}
        model_params = {k: self._param_value(v) for k, v in (params or {}).items()}
        what = f"checkpoint '{name}' ({uri}) of run {run_id}"
        fields = {
            "name": name,
            "source_run_id": run_id,
            "tags": model_tags,
            "params": model_params,
            "model_type": model_type,
            "experiment_id": self.experiment_id,
        }
        if wait:
            self.flush()
            model = self._call(what, lambda: _OPS["create_external_model"](self, **fields))
        else:
            model = self._record(what, "create_external_model", **fields)
        return model.model_id if model is not None else None

    def register(
        self,
        model_id: str,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        aliases: Sequence[str] = (),
    ) -> ModelVersion:
        """Register a LoggedModel as a new version of `name` (default tracking.registered_model), with
        lineage tags (model id, checkpoint URI, source and pipeline runs, plus `tags`) and aliases."""
        mlflow = _mlflow()
        name = name or self.cfg.registered_model
        model = self.logged_model(model_id)
        source_run = model.source_run_id or ""
        lineage = {
            TAG_MODEL_ID: model_id,
            TAG_CHECKPOINT_URI: model.tags.get(TAG_CHECKPOINT_URI, ""),
            TAG_SOURCE_RUN: source_run,
            TAG_PIPELINE_RUN: self.parent_run_id or self._parent_of(source_run),
            **dict(tags or {}),
        }
        version = self._call(
            f"register {model_id} as '{name}'",
            lambda: mlflow.register_model(f"models:/{model_id}", name, tags=lineage),
        )
        for alias in aliases:
            self._call(
                f"alias '{alias}' -> {name} v{version.version}",
                lambda a=alias: self.client.set_registered_model_alias(name, a, version.version),
            )
        return self.client.get_model_version(name, version.version)

    def log_trace(self, run_id: str, spec: Mapping[str, Any]) -> str | None:
        """An agent episode's trace (protege.tracking.traces.episode_trace) in the experiment, linked to run
        `run_id`; returns the trace id, or None while the server is down (the trace is buffered)."""
        return self._record(f"trace '{spec['name']}' of run {run_id}", "log_trace", run_id=run_id, spec=spec)

    def link_model(self, phase: str, uri: str, model_id: str | None) -> None:
        """Tag the pipeline run with a phase's model (`protege.model.<phase>.uri` / `.model_id`), so the
        parent run links to every model the pipeline made; a later call for the same phase replaces it."""
        if not self.parent_run_id:
            return
        tags = {f"protege.model.{phase}.uri": uri}
        if model_id:
            tags[f"protege.model.{phase}.model_id"] = model_id
        self.set_tags(self.parent_run_id, tags)

    def find_checkpoint(self, uri: str) -> LoggedModel | None:
        """The newest LoggedModel of this experiment whose checkpoint URI is `uri`, or None."""
        found = self._call(
            f"logged model of {uri}",
            lambda: list(
                self.client.search_logged_models(
                    experiment_ids=[self.experiment_id],
                    filter_string=f"tags.`{TAG_CHECKPOINT_URI}` = '{uri}'",
                    order_by=[{"field_name": "creation_time", "ascending": False}],
                )
            ),
        )
        return found[0] if found else None

    # ---- reading back -----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        return self._call(f"run {run_id}", lambda: self.client.get_run(run_id))

    def nested_runs(self, parent_run_id: str | None = None) -> list[Run]:
        """The phase runs of a pipeline run, oldest first."""
        parent = parent_run_id or self._require_parent()
        return self._call(
            f"nested runs of {parent}",
            lambda: list(
                self.client.search_runs(
                    [self.experiment_id],
                    filter_string=f"tags.`{_PARENT_TAG}` = '{parent}'",
                    order_by=["attributes.start_time ASC"],
                )
            ),
        )

    def dataset_inputs(self, run_id: str) -> list[DatasetInput]:
        return list(self.get_run(run_id).inputs.dataset_inputs)

    def logged_model(self, model_id: str) -> LoggedModel:
        return self._call(f"logged model {model_id}", lambda: self.client.get_logged_model(model_id))

    def logged_models(self, run_id: str) -> list[LoggedModel]:
        """LoggedModels created by a run (MLflow does not list external models in run outputs)."""
        return self._call(
            f"logged models of run {run_id}",
            lambda: list(
                self.client.search_logged_models(
                    experiment_ids=[self.experiment_id], filter_string=f"source_run_id = '{run_id}'"
                )
            ),
        )

    def model_version(self, alias: str, name: str | None = None) -> ModelVersion:
        name = name or self.cfg.registered_model
        return self._call(
            f"model '{name}'@{alias}", lambda: self.client.get_model_version_by_alias(name, alias)
        )

    def adopt_run(self, source_run_id: str) -> str:
        """Copy the nested run `source_run_id` (recorded by a step before this pipeline run existed, maybe in
        an earlier KFP run whose output KFP reused from its cache) into this pipeline run: same name,
        start/end time, status, params, metric histories, tags and dataset inputs, tagged with the source run
        id (its artifacts stay there). Returns the copy's run id."""
        from mlflow.entities import Metric, Param
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

        client, parent = self.client, self._require_parent()
        source = self.get_run(source_run_id)
        tags = {k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.")}
        tags |= {"mlflow.parentRunId": parent, TAG_PIPELINE_RUN: parent, TAG_ADOPTED_FROM: source_run_id}
        copy = self._call(
            f"copy of run {source_run_id} into {parent}",
            lambda: client.create_run(
                self.experiment_id,
                start_time=source.info.start_time,
                tags=tags,
                run_name=source.info.run_name,
            ),
        ).info.run_id
        history = [m for key in source.data.metrics for m in client.get_metric_history(source_run_id, key)]
        metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
        params = [Param(key, value) for key, value in source.data.params.items()]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            client.log_batch(copy, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(copy, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        if source.inputs.dataset_inputs:
            client.log_inputs(copy, datasets=list(source.inputs.dataset_inputs))
        client.set_terminated(copy, status=source.info.status, end_time=source.info.end_time)
        return copy

    def model_version_number(self, name: str, number: int) -> ModelVersion:
        return self._call(f"model '{name}' v{number}", lambda: self.client.get_model_version(name, number))

    def metric_history(self, run_id: str, key: str) -> list[Any]:
        return self._call(
            f"metric {key} of run {run_id}", lambda: self.client.get_metric_history(run_id, key)
        )

    # ---- internals --------------------------------------------------------------------------------

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.cfg.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.cfg.experiment)
        except MlflowException:
            # Another process created it between our lookup and create.
            return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id

    def _parent_of(self, run_id: str) -> str:
        return self.get_run(run_id).data.tags.get(_PARENT_TAG, "") if run_id else ""

    def _require_parent(self) -> str:
        if not self.parent_run_id:
            raise TrackingError(f"no pipeline run: call start_pipeline() first (or set {PARENT_RUN_ENV})")
        return self.parent_run_id

    def _param_value(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        limit = self.cfg.param_value_max_chars
        return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED

    def _once(self, what: str, func: Any) -> Any:
        """`func()` with MLflow's errors as TrackingError (TrackingUnavailable when the server is down)."""
        from mlflow.exceptions import MlflowException

        try:
            return func()
        except MlflowException as err:
            # The REST client reports a refused connection as INTERNAL_ERROR (HTTP 500) too.
            kind = TrackingUnavailable if err.get_http_status_code() >= 500 else TrackingError
            raise kind(f"{self.cfg.uri}: {what}: {err.message}") from err
        except OSError as err:  # connection refused/reset, timeouts (requests' errors are OSErrors)
            raise TrackingUnavailable(f"{self.cfg.uri}: {what}: tracking server unreachable: {err}") from err

    def _call(self, what: str, func: Any) -> Any:
        """`func()`, retried while the server is unavailable (`tracking.retry_attempts`, bounded backoff)."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.retry_attempts),
            wait=wait_exponential(multiplier=self.cfg.retry_backoff_s, max=self.cfg.retry_backoff_max_s),
            retry=retry_if_exception_type(TrackingUnavailable),
            reraise=True,
        )
        return retrying(lambda: self._once(what, func))

    def _record(self, what: str, kind: str, **fields: Any) -> Any:
        """A call that only records (`_OPS[kind](self, **fields)`): tried once; while the server is down it
        joins the buffer (in order behind anything already buffered, and in the spool file) and None is
        returned."""
        with self._pending_lock:
            if self._pending:
                self._pending.append((what, kind, fields))
                self._save_spool()
                self._probe()
                return None
            try:
                return self._apply((what, kind, fields))
            except TrackingUnavailable as err:
                log.warning("tracking: server unavailable, buffering calls until it answers: %s", err)
                self._pending.append((what, kind, fields))
                self._save_spool()
                self._last_probe = time.monotonic()
                return None

    def _apply(self, op: tuple[str, str, dict[str, Any]]) -> Any:
        what, kind, fields = op
        return self._once(what, lambda: _OPS[kind](self, **fields))

    # ---- the spool: buffered calls on disk, so a process that dies does not lose them -------------

    def _spool_key(self) -> str:
        import hashlib

        return hashlib.sha256(f"{self.cfg.uri}\n{self.cfg.experiment}".encode()).hexdigest()[:16]

    def _save_spool(self) -> None:
        """Write the buffer to this process's spool file (atomically); remove it once the buffer is empty."""
        import pickle

        if self._spool is None:
            return
        if not self._pending:
            self._spool.unlink(missing_ok=True)
            return
        try:
            self._spool.parent.mkdir(parents=True, exist_ok=True)
            part = self._spool.with_suffix(".part")
            part.write_bytes(pickle.dumps(self._pending))
            part.replace(self._spool)
        except (OSError, pickle.PicklingError, TypeError, AttributeError) as err:
            log.warning("tracking: could not spool buffered calls to %s: %s", self._spool, err)

    def _adopt_spools(self) -> None:
        """Take over spool files left by earlier processes for this server and experiment (rename is atomic,
        so two processes never both send them) and buffer their calls first."""
        import pickle
        import uuid
        from pathlib import Path

        if not self.cfg.spool_dir:
            return
        directory = Path(self.cfg.spool_dir)
        key = self._spool_key()
        self._spool = directory / f"{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pkl"
        for path in sorted(directory.glob(f"{key}-*.pkl")) if directory.is_dir() else []:
            claimed = path.with_suffix(".claimed")
            try:
                path.rename(claimed)
                self._pending.extend(pickle.loads(claimed.read_bytes()))
                claimed.unlink()
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
                log.warning("tracking: could not read spooled calls %s: %s", path, err)
        if self._pending:
            log.warning("tracking: %d call(s) left by an earlier process; sending them", len(self._pending))
            self._save_spool()
            self._probe()

    def _probe(self) -> None:
        """Try the buffer again, at most once per `tracking.retry_backoff_max_s` (the phase goes on meanwhile)."""
        if time.monotonic() - self._last_probe < self.cfg.retry_backoff_max_s:
            return
        self._last_probe = time.monotonic()
        try:
            self._drain()
        except TrackingUnavailable:
            pass

    def _drain(self) -> None:
        with self._pending_lock:
            while self._pending:
                self._apply(self._pending[0])
                self._pending.pop(0)
                self._save_spool()
        log.info("tracking: buffered calls flushed to %s", self.cfg.uri)

    @property
    def pending(self) -> int:
        """Recording calls buffered while the server was down and not yet flushed."""
        with self._pending_lock:
            return len(self._pending)

    def flush(self, timeout_s: float | None = None) -> None:
        """Send every buffered call, retrying with backoff for up to `timeout_s` (default
        `tracking.flush_timeout_s`); TrackingError naming what is pending when the server never answers."""
        timeout_s = self.cfg.flush_timeout_s if timeout_s is None else timeout_s
        deadline, wait = time.monotonic() + timeout_s, max(self.cfg.retry_backoff_s, 0.1)
        while self.pending:
            try:
                self._drain()
            except TrackingUnavailable as err:
                if time.monotonic() + wait > deadline:
                    raise TrackingError(
                        f"{self.cfg.uri}: {self.pending} tracking call(s) not logged after "
                        f"{timeout_s:.0f} s of retries (first: {self._pending[0][0]}): {err}"
                    ) from err
                time.sleep(wait)
                wait = min(wait * 2, max(self.cfg.retry_backoff_max_s, 0.1))


# What a buffered call does, by kind: plain data in the buffer, so it can be spooled to disk.
_OPS: dict[str, Any] = {
    "log_batch": lambda t, run_id, **batch: t.client.log_batch(run_id, **batch),
    "log_dict": lambda t, run_id, dictionary, artifact_file: t.client.log_dict(
        run_id, dictionary, artifact_file
    ),
    "log_artifact": lambda t, run_id, local, to: t.client.log_artifact(run_id, local, to),
    "log_artifacts": lambda t, run_id, local, to: t.client.log_artifacts(run_id, local, to),
    "log_inputs": lambda t, run_id, datasets: t.client.log_inputs(run_id, datasets=datasets),
    "create_external_model": lambda t, **fields: _mlflow().create_external_model(**fields),
    "log_trace": lambda t, run_id, spec: _send_trace(t, run_id, spec),
}


def _send_trace(tracker: Tracker, run_id: str, spec: Mapping[str, Any]) -> str:
    """Create the trace of `spec` span by span with the recorded times. MLflow's exporter swallows a
    failed send, so the server is asked first: a dead server raises here and the trace is buffered."""
    from mlflow.tracing.constant import SpanAttributeKey

    client = tracker.client
    client.get_experiment(tracker.experiment_id)
    root = client.start_trace(
        spec["name"],
        span_type=spec["type"],
        inputs=spec["inputs"],
        attributes=dict(spec["attributes"]),
        tags=dict(spec["tags"]),
        experiment_id=tracker.experiment_id,
        start_time_ns=spec["start_ns"],
        run_id=run_id,
    )
    made = []
    for span in spec["spans"]:
        parent = root if span["parent"] is None else made[span["parent"]]
        attributes = dict(span["attributes"])
        if span.get("usage") is not None:
            attributes[SpanAttributeKey.CHAT_USAGE] = span["usage"]
        if span.get("cost_usd") is not None:
            attributes[SpanAttributeKey.LLM_COST] = {"total_cost": span["cost_usd"]}
        made.append(
            client.start_span(
                span["name"],
                trace_id=root.trace_id,
                parent_id=parent.span_id,
                span_type=span["type"],
                inputs=span["inputs"],
                attributes=attributes,
                start_time_ns=span["start_ns"],
            )
        )
    for span, spec_span in reversed(list(zip(made, spec["spans"], strict=True))):
        status = "ERROR" if spec_span.get("error") else "OK"
        client.end_span(
            root.trace_id,
            span.span_id,
            outputs=spec_span["outputs"],
            status=status,
            end_time_ns=spec_span["end_ns"],
        )
    client.end_trace(root.trace_id, outputs=spec["outputs"], end_time_ns=spec["end_ns"])
    return root.trace_id


def _dataset_source(source: str) -> Any:
    """MLflow's source for `source` (s3://, a path, ...), or, for a name MLflow cannot resolve (`demo:eval`,
    a hub dataset id), a source of type `protege` that records the name as given."""
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    try:
        return resolve_dataset_source(source)
    except MlflowException:
        pass

    class NamedSource(DatasetSource):
        @staticmethod
        def _get_source_type() -> str:
            return "protege"

        def load(self) -> Any:
            raise NotImplementedError(f"{source}: load it with protege.tasksets")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"uri": source}

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]) -> Any:
            return cls()

    return NamedSource()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
