"""A small model hub on 127.0.0.1 that speaks the Hugging Face Hub's file protocol (repo info,
tree listing, resolve), serving folders of files, for testing downloads with the real client.

    python tests/hub_server.py PORT owner/name=FOLDER [owner/name=FOLDER ...]

Requests are appended to `requests.log` beside this file's working directory, one per line.
"""

from __future__ import annotations

import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}

    def log_message(self, *args) -> None:
        with open("requests.log", "a", encoding="utf-8") as log:
            log.write(f"{self.command} {self.path}\n")

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/api/v1/models/"):
            return self._modelscope(path.removeprefix("/api/v1/models/"), head)
        if path.startswith("/api/models/"):
            return self._api(path.removeprefix("/api/models/"))
        repo, _, rest = path.lstrip("/").partition("/resolve/")
        if repo in self.repos and rest:
            _revision, _, name = rest.partition("/")
            return self._file(repo, name, head)
        self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})

    def _api(self, rest: str) -> None:
        for repo, folder in self.repos.items():
            if rest.startswith(repo + "/revision/") or rest == repo:
                files = [{"rfilename": p.name} for p in sorted(folder.iterdir())]
                return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": files})
            if rest.startswith(repo + "/tree/"):
                return self._json([_entry(p) for p in sorted(folder.iterdir())])
        self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})

    def _modelscope(self, rest: str, head: bool) -> None:
        """ModelScope's API: the file list, and each file by its FilePath."""
        query = dict(parse_qsl(urlsplit(self.path).query))
        for repo, folder in self.repos.items():
            if rest == f"{repo}/repo/files":
                files = [_modelscope_entry(p) for p in sorted(folder.iterdir())]
                return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
            if rest == f"{repo}/repo" and "FilePath" in query:
                return self._file(repo, query["FilePath"], head)
            if rest in (repo, f"{repo}/revisions"):
                info = {
                    "Id": repo,
                    "Revision": COMMIT,
                    "RevisionMap": {"Branches": [{"Revision": "master"}]},
                }
                return self._json({"Code": 200, "Success": True, "Data": info})
        self._json({"Code": 404, "Message": "Repository not found"}, 404)

    def _file(self, repo: str, name: str, head: bool) -> None:
        file = self.repos[repo] / name
        if not file.is_file():
            return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{_blob_id(data)}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _json(self, body, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # as git names a blob


def _entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"type": "file", "path": path.name, "size": len(data), "oid": _blob_id(data)}


def _modelscope_entry(path: Path) -> dict:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return {"Name": path.name, "Path": path.name, "Type": "blob", "Size": len(data),
            "Sha256": sha, "Revision": COMMIT}  # fmt: skip


def main() -> None:
    port = int(sys.argv[1])
    for item in sys.argv[2:]:
        repo, _, folder = item.partition("=")
        Hub.repos[repo] = Path(folder)
    server = ThreadingHTTPServer(("127.0.0.1", port), Hub)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
