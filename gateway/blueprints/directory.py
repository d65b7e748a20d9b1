"""The open directory of data resources: HTML, JSON, DCAT JSON-LD, and open-data (L1) downloads. No login."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template, request, send_file

from gateway.context import services
from sandbox import directory

bp = Blueprint("directory", __name__, url_prefix="/public")


def _fresh(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/datasets")
def datasets_html():  # noqa: ANN201
    if request.args.get("format") == "json":
        return datasets_json()
    data = directory.directory(services())
    return _fresh(Response(render_template("public/datasets.html", directory=data), mimetype="text/html"))


@bp.get("/datasets.json")
def datasets_json():  # noqa: ANN201
    return _fresh(jsonify(directory.directory(services())))


@bp.get("/datasets.jsonld")
def datasets_jsonld():  # noqa: ANN201
    resp = jsonify(directory.dcat(services()))
    resp.mimetype = "application/ld+json"
    return _fresh(resp)


@bp.get("/datasets/<ds_id>.<fmt>")
def download(ds_id: str, fmt: str):  # noqa: ANN201
    """Open data: the declared columns of an L1 resource, to anyone. L2-L4 get 403, unknown ids 404."""
    path = directory.open_data_file(services(), ds_id, fmt)
    resp = send_file(path, mimetype=directory.FORMATS[fmt], as_attachment=True,
                     download_name=f"{ds_id}.{fmt}", conditional=True)
    resp.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return resp
