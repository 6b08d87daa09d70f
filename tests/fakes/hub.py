"""A Hugging Face Hub on loopback, for HF_ENDPOINT: the endpoints huggingface_hub's downloads use, over files on disk.

It serves each repository from a folder (the layout the real repository has) at one fixed commit:
repo info (`/api/models/{repo}[/revision/{rev}]`, with `siblings`), the file tree, paths-info, and
`/{repo}/resolve/{rev}/{path}` with the headers huggingface_hub reads (X-Repo-Commit, ETag,
Content-Length), ranges included so interrupted downloads resume. Every request is recorded.

A repository in `gated` answers as the Hub answers for a gated model whose licence the caller has not
accepted: 401 with `X-Error-Code: GatedRepo`, unless the request carries a token of `accepted_tokens`
(`Authorization: Bearer ...`, what HF_TOKEN sends).

`SilentHub` accepts connections and never answers: a proxy, a captive portal, a dropping firewall.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# What vary fetches of the real FLUX.1 repositories (never their text encoders or single-file originals).
FLUX_SCHNELL_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    *(f"transformer/diffusion_pytorch_model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)),
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}
FLUX_REDUX_FILES = {
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json",
    "image_encoder/model.safetensors",
    "image_embedder/config.json",
    "image_embedder/diffusion_pytorch_model.safetensors",
}


@dataclass
class FakeHub:
    repos: dict[str, Path]  # repo id -> the folder it serves
    port: int = 0
    requests: list[str] = field(default_factory=list)
    gated: frozenset[str] = frozenset()  # repo ids whose licence must be accepted
    accepted_tokens: frozenset[str] = frozenset()  # tokens of accounts that accepted it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _entry(self, path: str, file: Path) -> dict[str, object]:
        data = file.read_bytes()
        entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
        if path.endswith(".safetensors"):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _etag(self, path: str, file: Path) -> str:
        data = file.read_bytes()
        return hashlib.sha256(data).hexdigest() if path.endswith(".safetensors") else _git_oid(data)

    def app(self) -> Starlette:
        async def info(request: Request) -> Response:
            repo = f"{request.path_params['owner']}/{request.path_params['name']}"
            if repo not in self.repos:
                return JSONResponse({"error": "Repository not found"}, status_code=404)
            files = self._files(repo)
            siblings = [{"rfilename": path, "size": file.stat().st_size} for path, file in files.items()]
            return JSONResponse({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings})

        async def tree(request: Request) -> Response:
            repo = f"{request.path_params['owner']}/{request.path_params['name']}"
            if repo not in self.repos:
                return JSONResponse({"error": "Repository not found"}, status_code=404)
            return JSONResponse([self._entry(path, file) for path, file in self._files(repo).items()])

        async def paths_info(request: Request) -> Response:
            repo = f"{request.path_params['owner']}/{request.path_params['name']}"
            files = self._files(repo)
            form = await request.form()
            wanted = [str(p) for p in form.getlist("paths")]
            return JSONResponse([self._entry(path, files[path]) for path in wanted if path in files])

        async def resolve(request: Request) -> Response:
            repo = f"{request.path_params['owner']}/{request.path_params['name']}"
            path = request.path_params["path"]
            file = self._files(repo).get(path) if repo in self.repos else None
            if file is None:
                return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
            data = file.read_bytes()
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{self._etag(path, file)}"',
                "Accept-Ranges": "bytes",
            }
            start = 0
            ranged = request.headers.get("range", "")
            if ranged.startswith("bytes=") and request.method == "GET":
                start = int(ranged[6:].split("-")[0] or 0)
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            if request.method == "HEAD":
                return Response(status_code=200, headers=headers)
            return Response(data[start:], status_code=206 if start else 200, headers=headers)

        async def record(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
            self.requests.append(f"{scope['method']} {scope['path']}")
            if scope["type"] == "http" and self._refused(scope):
                message = "Access to this model is restricted: accept its licence on its page, with an account token"
                headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": message}
                await JSONResponse({"error": message}, status_code=401, headers=headers)(scope, receive, send)  # type: ignore[arg-type]
                return
            await inner(scope, receive, send)  # type: ignore[arg-type]

        repo = "/{owner}/{name}"
        inner = Starlette(
            routes=[
                Route(f"/api/models{repo}", info),
                Route(f"/api/models{repo}/revision/{{rev}}", info),
                Route(f"/api/models{repo}/tree/{{rev}}", tree),
                Route(f"/api/models{repo}/tree/{{rev}}/{{sub:path}}", tree),
                Route(f"/api/models{repo}/paths-info/{{rev}}", paths_info, methods=["POST"]),
                Route(f"{repo}/resolve/{{rev}}/{{path:path}}", resolve, methods=["GET", "HEAD"]),
            ]
        )
        return record  # type: ignore[return-value]

    def _refused(self, scope: dict) -> bool:  # type: ignore[type-arg]
        path = str(scope["path"]).removeprefix("/api/models")
        repo = "/".join(path.strip("/").split("/")[:2])
        if repo not in self.gated:
            return False
        headers = {key.decode().lower(): value.decode() for key, value in scope["headers"]}
        token = headers.get("authorization", "").removeprefix("Bearer ")
        return token not in self.accepted_tokens

    def __enter__(self) -> FakeHub:
        self._server = LoopbackServer(self.app(), port=self.port, log_config=None, access_log=False)
        self.port = self._server.port
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop(wait=10)


class SilentHub:
    """Listens and accepts connections, then never sends a byte."""

    def __enter__(self) -> SilentHub:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)  # the kernel completes the handshakes; nobody reads or answers
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        return self

    def __exit__(self, *_: object) -> None:
        self.socket.close()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
