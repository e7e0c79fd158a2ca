"""The OpenAPI document: valid OpenAPI 3.1, and exactly the routes the app serves."""

from __future__ import annotations

import json
import re
from importlib.resources import files

from openapi_spec_validator import validate

from sdns.api.app import make_app

DOCUMENT = json.loads(files("sdns.api").joinpath("openapi.json").read_text())


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)


def test_every_route_is_documented_and_nothing_else() -> None:
    app = make_app(registry=None, balancer=None)  # type: ignore[arg-type]  # routes only
    served = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD"}  # aiohttp adds HEAD to every GET
    documented = {(method.upper(), path) for path, item in DOCUMENT["paths"].items()
                  for method in item if method != "parameters"}
    assert served == documented


def test_every_operation_documents_its_errors() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            statuses = set(operation["responses"])
            if operation.get("security") != []:
                assert {"401", "403"} <= statuses, (method, path)
            if re.search(r"\{", path):
                assert "400" in statuses, (method, path)
            if method in ("put", "post", "delete"):
                assert {"400", "503"} <= statuses, (method, path)
            if "requestBody" in operation:
                assert "415" in statuses, (method, path)
