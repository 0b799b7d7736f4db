"""The generated OpenAPI schema documents every endpoint, field, constraint and error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from common.schedulers import SCHEDULER_NAMES
from tests.support.live import Stack


@pytest.fixture(scope="module")
def openapi(live_stack: Stack) -> dict[str, Any]:
    response = httpx.get(f"{live_stack.api_url}/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def test_endpoints_are_documented(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    expected = {
        ("post", "/v1/ssd-img2img"),
        ("post", "/v2/ssd-img2img"),
        ("get", "/v2/requests"),
        ("get", "/v2/requests/{request_id}"),
        ("get", "/v2/requests/{request_id}/status"),
        ("get", "/v1/account"),
        ("get", "/health"),
    }
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert expected <= documented
    assert any(path.startswith("/admin/") for path in paths)


def test_request_fields_and_constraints(openapi: dict[str, Any]) -> None:
    body = openapi["components"]["schemas"]["Img2ImgRequest"]
    props = body["properties"]
    assert set(body["required"]) == {"image", "prompt"}
    assert (props["samples"]["minimum"], props["samples"]["maximum"]) == (1, 4)
    assert (props["num_inference_steps"]["minimum"], props["num_inference_steps"]["maximum"]) == (
        20,
        100,
    )
    assert (props["guidance_scale"]["minimum"], props["guidance_scale"]["maximum"]) == (1, 25)
    assert (props["seed"]["minimum"], props["seed"]["maximum"]) == (-1, 999_999_999_999_999)
    assert (props["strength"]["minimum"], props["strength"]["maximum"]) == (0, 0.99)
    assert set(props["scheduler"]["enum"]) == set(SCHEDULER_NAMES)
    assert props["scheduler"]["default"] == "DPM2 Karras"
    assert all(field.get("description") for name, field in props.items() if name != "base64")


def test_every_authenticated_operation_documents_its_errors(openapi: dict[str, Any]) -> None:
    missing = []
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            if path in ("/health",):
                continue
            responses = operation["responses"]
            if "401" not in responses:
                missing.append(f"{method.upper()} {path}: 401")
            for code, response in responses.items():
                if code.startswith(("4", "5")) and code != "422":
                    schema = response["content"]["application/json"]["schema"]
                    assert "$ref" in schema, f"{method.upper()} {path} {code}"
    assert not missing, missing


def test_docs_page_is_served(live_stack: Stack) -> None:
    response = httpx.get(f"{live_stack.api_url}/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
