"""The official Node SDK (the `openai` npm package), unchanged, against a live server: url, b64_json, an error.

The package is installed from the npm registry into a temporary directory. Without node, npm or the
registry the test is skipped, unless VARY_REQUIRE_NODE is set (as .ci/run sets it): then it fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import decode_png, png_bytes
from vary.testing import ServerProcess

REQUIRED = bool(os.environ.get("VARY_REQUIRE_NODE"))
NPM_PACKAGE = "openai@^7"  # a major version, so a breaking release is a choice, not a surprise

SCRIPT = r"""
import fs from "node:fs";
import OpenAI, { AzureOpenAI, toFile } from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
const png = () => toFile(fs.readFileSync(process.env.IMAGE), "in.png", { type: "image/png" });
const out = {};
const urls = await client.images.createVariation({ image: await png(), n: 2, size: "256x256" });
out.urls = urls.data.map((d) => d.url);
const b64 = await client.images.createVariation({ image: await png(), size: "512x512", response_format: "b64_json" });
out.b64 = b64.data.map((d) => d.b64_json);
// A list goes out as image[] parts; extra keys (vary's fields) go into the form as they are.
const blend = await client.images.createVariation({
  image: [await png(), await png()], image_weights: "0.7,0.3", size: "256x256", response_format: "b64_json",
});
out.blend = blend.data.length;
// Azure's client, unchanged: the deployment in the path, the key in the api-key header.
const azure = new AzureOpenAI({
  baseURL: process.env.AZURE_BASE_URL, apiKey: process.env.API_KEY, apiVersion: "2024-02-01", maxRetries: 0,
});
const viaAzure = await azure.images.createVariation({
  image: await png(), size: "256x256", response_format: "b64_json",
});
out.azure = viaAzure.data.length;
try {
  await client.images.createVariation({ image: await png(), n: 11 });
  out.error = null;
} catch (err) {
  out.error = { status: err.status, param: err.param, type: err.type, message: err.message };
}
console.log(JSON.stringify(out));
"""


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"VARY_REQUIRE_NODE is set but {reason}")
    pytest.skip(f"{reason}; .ci/run installs nodejs and npm and requires this test")


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("node or npm is not installed (apt install nodejs npm)")
    project = tmp_path_factory.mktemp("node-sdk")
    (project / "package.json").write_text(json.dumps({"name": "vary-node-sdk-test", "private": True, "type": "module"}))
    try:
        installed = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", NPM_PACKAGE],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        _unavailable("npm install did not finish in 300 s (is the npm registry reachable?)")
    if installed.returncode != 0:
        _unavailable(f"npm install {NPM_PACKAGE} failed (is the npm registry reachable?): {installed.stderr[-500:]}")
    (project / "variation.mjs").write_text(SCRIPT)
    return project


def test_node_sdk_create_variation(node_project: Path, server: ServerProcess, api_key: str, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes(64))
    env = {**os.environ, "BASE_URL": f"{server.base_url}/v1", "API_KEY": api_key, "IMAGE": str(image)}
    env["AZURE_BASE_URL"] = f"{server.base_url}/openai/deployments/tiny-random"
    done = subprocess.run(
        ["node", "variation.mjs"], cwd=node_project, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert len(out["urls"]) == 2
    for url in out["urls"]:
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200 and decode_png(response.content).size == (256, 256)
    assert len(out["b64"]) == 1 and decode_png(base64.b64decode(out["b64"][0])).size == (512, 512)
    assert out["blend"] == 1 and out["azure"] == 1
    error = out["error"]
    assert error is not None and error["status"] == 400 and error["param"] == "n"
    assert error["type"] == "invalid_request_error"
