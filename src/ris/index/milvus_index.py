"""Milvus collections through pymilvus: Milvus Lite embedded by default, a Milvus server with the same code.

With ``uri`` empty the collection lives in Milvus Lite (``pymilvus.MilvusClient("file.db")`` runs it inside this
process) and is saved into the index folder like any other family's files; with ``uri`` naming a server
(``http://host:19530``) the vectors live on the server and the folder only names the collection. ``index_type``
picks Milvus's index (``FLAT``, ``IVF_FLAT``, ``IVF_SQ8``, ``HNSW``; a server knows more); ``nlist`` or ``M`` and
``efConstruction`` shape it, ``nprobe`` or ``ef`` trade query time for recall. Primary keys are row numbers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ris.index.base import NearestNeighbourIndex
from ris.index.registry import register_index

if TYPE_CHECKING:  # pymilvus (0.4 s to import, and it configures logging) is imported by an index in use only
    from pymilvus import MilvusClient

DB_DIR = "milvus.db"  # Milvus Lite's database: a folder, whatever its name says
DESCRIPTION_FILE = "milvus.json"
LITE_COLLECTION = "ris"
TOKEN_VARIABLE = "MILVUS_TOKEN"  # a server's credentials come from the environment, never from a saved config
ID, VECTOR = "id", "vector"
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_LADDER = (10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)
LITE_SCAN_BYTES = 256 * 2**20  # Milvus Lite's FLAT holds a queries x rows x dim float32 array: cap it


class _Connection:
    """A client, opened on first use; for Milvus Lite, also the private temporary copy of the database it serves.

    Kept apart from the index so that the index's finalizer can close it (and delete the copy) without keeping the
    index alive.
    """

    def __init__(self, uri: str | None) -> None:
        self.uri = uri or None
        self.lite_dir = None if self.uri else Path(tempfile.mkdtemp(prefix="ris-milvus-"))
        self.client: MilvusClient | None = None

    @property
    def lite_db(self) -> Path | None:
        return None if self.lite_dir is None else self.lite_dir / DB_DIR

    def get(self) -> MilvusClient:
        if self.client is None:
            from pymilvus import MilvusClient

            # pymilvus logs every failed call with its traceback; ris raises the error all the same, in one line.
            logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
            if self.lite_db is not None:
                self.client = MilvusClient(str(self.lite_db))
            else:
                self.client = MilvusClient(uri=self.uri, token=os.environ.get(TOKEN_VARIABLE, ""))
        return self.client

    def disconnect(self) -> None:
        """Close the client; Milvus Lite's in-process server stops too, which writes everything to its folder."""
        if self.client is None:
            return
        self.client.close()
        self.client = None
        if self.lite_db is not None:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(str(self.lite_db))

    def close(self) -> None:
        self.disconnect()
        if self.lite_dir is not None:
            shutil.rmtree(self.lite_dir, ignore_errors=True)


@register_index
class MilvusIndex(NearestNeighbourIndex):
    """Approximate (or, with ``FLAT``, exact) k-NN in a Milvus collection under L2; angular L2-normalises first.

    Milvus Lite never works on the saved folder itself: building uses a temporary database that saving copies in,
    loading copies the folder's database out, so that the saved artifact stays unchanged (DVC checks it) and several
    processes can load it at once. :meth:`close` (or garbage collection, or exit) stops the server and deletes the
    copy.
    """

    name: ClassVar[str] = "milvus"
    defaults: ClassVar[dict[str, Any]] = {"uri": None, "collection": None, "index_type": "IVF_FLAT", "nlist": 128,
                                          "M": 16, "efConstruction": 200, "nprobe": 8, "ef": 64,
                                          "batch_size": 2_000}
    search_settings: ClassVar[tuple[str, ...]] = ("nprobe", "ef")

    def __init__(self, dim: int, metric: str = "euclidean", **params: Any) -> None:
        super().__init__(dim, metric, **params)
        self._connection = _Connection(self.params["uri"])
        self._finalizer = weakref.finalize(self, self._connection.close)
        # A server is shared: each index gets a collection of its own unless one is named.
        self._collection = str(self.params["collection"] or (
            LITE_COLLECTION if self._connection.lite_db is not None else f"ris_{uuid.uuid4().hex}"))
        self._size = 0
        self._created = False
        self._indexed = False
        self._loaded = False

    def close(self) -> None:
        """Release the client (and Milvus Lite's server and temporary database); the index is unusable after."""
        self._finalizer()

    def add(self, vectors: np.ndarray) -> None:
        vectors = self.prepare(vectors)
        client = self._connection.get()
        if not self._created:
            self._create(client)
        batch = int(self.params["batch_size"])  # rows a request: far below gRPC's message size limit
        for start in range(0, len(vectors), batch):
            rows = vectors[start:start + batch].tolist()
            client.insert(self._collection, [{ID: self._size + start + offset, VECTOR: row}
                                             for offset, row in enumerate(rows)])
        self._size += len(vectors)
        self._loaded = False

    def _create(self, client: MilvusClient) -> None:
        from pymilvus import DataType

        if client.has_collection(self._collection):  # a rebuild replaces the collection it names
            client.drop_collection(self._collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
        client.create_collection(self._collection, schema=schema)  # indexed by finalize, once the rows are in
        self._created = True

    def _build_params(self) -> dict[str, Any]:
        index_type = str(self.params["index_type"]).upper()
        if index_type.startswith("IVF"):
            return {"nlist": int(self.params["nlist"])}
        if index_type.startswith("HNSW"):
            return {"M": int(self.params["M"]), "efConstruction": int(self.params["efConstruction"])}
        return {}

    def _search_params(self, k: int) -> dict[str, Any]:
        index_type = str(self.params["index_type"]).upper()
        if index_type.startswith("IVF"):
            return {"nprobe": int(self.params["nprobe"])}
        if index_type.startswith("HNSW"):
            return {"ef": max(int(self.params["ef"]), k)}  # a server refuses ef below k
        return {}

    def search_ladder(self, k: int) -> list[dict[str, Any]]:
        index_type = str(self.params["index_type"]).upper()
        if index_type.startswith("IVF"):
            nlist = int(self.params["nlist"])
            return [{"nprobe": nprobe} for nprobe in NPROBE_LADDER if nprobe < nlist] + [{"nprobe": nlist}]
        if index_type.startswith("HNSW"):
            return [{"ef": ef} for ef in EF_LADDER if ef >= k]
        return []

    def finalize(self) -> None:
        if not self._created:
            return
        client = self._connection.get()
        client.flush(self._collection)  # seals the inserted rows into segments, which get the index
        if self._indexed:
            client.release_collection(self._collection)  # rows added since: the load below indexes them
        else:
            index_params = client.prepare_index_params()
            # Build settings go as one JSON "params" entry: Milvus servers read it and so does Milvus Lite, which
            # ignores the flat form that pymilvus sends otherwise.
            index_params.add_index(VECTOR, index_type=str(self.params["index_type"]), metric_type="L2",
                                   params={"params": self._build_params()})
            client.create_index(self._collection, index_params)
            self._indexed = True
        self._wait_for_index(client)
        # Loading builds Milvus Lite's segment indexes then and there; without it they are built in the background
        # and searches scan the segments meanwhile.
        client.load_collection(self._collection)
        self._loaded = True

    def _wait_for_index(self, client: MilvusClient) -> None:
        """A server builds indexes in the background: wait, so that searches (and latencies) see the index."""
        while True:
            state = client.describe_index(self._collection, VECTOR)
            if state.get("state") == "Failed":
                raise RuntimeError(f"Milvus could not build the {self.params['index_type']} index of collection "
                                   f"{self._collection!r}: {state.get('fail_reason', 'no reason given')}")
            if state.get("state", "Finished") == "Finished" and not state.get("pending_index_rows"):
                return
            time.sleep(0.2)

    def __len__(self) -> int:
        return self._size

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self.prepare(queries)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        k_found = min(k, len(self))
        if k_found == 0:
            return ids, distances
        if not self._loaded:
            self.finalize()
        client = self._connection.get()
        search_params = {"metric_type": "L2", "params": self._search_params(k_found)}
        batch = int(self.params["batch_size"])
        if self._connection.lite_db is not None and str(self.params["index_type"]).upper() in ("FLAT", "BRUTE_FORCE"):
            batch = max(1, min(batch, LITE_SCAN_BYTES // (len(self) * self.dim * 4)))
        for start in range(0, len(queries), batch):
            results = client.search(self._collection, data=queries[start:start + batch].tolist(), limit=k_found,
                                    anns_field=VECTOR, search_params=search_params, output_fields=[])
            for row, hits in enumerate(results, start):
                squared = np.asarray(hits.distances, dtype=np.float32)  # Milvus's L2 (Lite's too) is squared
                ids[row, :len(squared)] = hits.ids  # fewer than k_found (an IVF probing few lists): padded
                distances[row, :len(squared)] = np.sqrt(np.maximum(squared, 0.0))
        return ids, distances

    def _save_data(self, folder: Path) -> None:
        if not self._created:  # an empty index still saves a collection, so that it loads like any other
            self._create(self._connection.get())
        if not self._loaded:
            self.finalize()
        lite_db = self._connection.lite_db
        if lite_db is not None:
            self._connection.disconnect()  # everything on disk, no server writing while it is copied
            shutil.copytree(lite_db, folder / DB_DIR)
            self._connection.get().load_collection(self._collection)  # searchable again, as before saving
        (folder / DESCRIPTION_FILE).write_text(json.dumps(
            {"uri": self._connection.uri, "collection": self._collection}, indent=2) + "\n")

    def _load_data(self, folder: Path) -> None:
        try:
            saved = json.loads((folder / DESCRIPTION_FILE).read_text())
            self._collection = str(saved["collection"])
            lite_db = self._connection.lite_db
            if lite_db is not None:
                shutil.copytree(folder / DB_DIR, lite_db)
            client = self._connection.get()
            if not client.has_collection(self._collection):
                where = self._connection.uri or str(folder / DB_DIR)
                raise FileNotFoundError(f"collection {self._collection!r} is not in {where}")
            self._created = self._indexed = True
            client.load_collection(self._collection)
            self._loaded = True
            self._size = int(client.get_collection_stats(self._collection)["row_count"])
        except BaseException:
            self.close()  # no server or temporary copy left behind by a damaged index
            raise
