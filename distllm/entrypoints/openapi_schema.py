"""Request-body schemas in the app's OpenAPI document.

The POST routes read their bodies by hand (`read_model`, with a size limit), so FastAPI cannot
see their pydantic models; `attach_request_schemas` writes them into `app.openapi()` so that
clients and schema-driven fuzzers (schemathesis, tests/reliability) know the bodies.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from fastapi import FastAPI

_REF = "#/components/schemas/{model}"


def _body_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(
                model=model.__name__)}}}}


def attach_request_schemas(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Make `app.openapi()` describe the JSON body of each `POST path` in `bodies`."""
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in bodies.items():
            post = schema["paths"].get(path, {}).get("post")
            if post is not None:
                post["requestBody"] = _body_schema(model, components)
                post.setdefault("responses", {})["400"] = {"description": "invalid request"}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
