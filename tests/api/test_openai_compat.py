"""The OpenAI-compatible endpoints, driven by the real `openai` client against a live `semindex serve`."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import semindex
from semindex.core import count_tokens
from tests.api.serving import KEY, ServeProcess, cli_store

# The whole module is in the real model's lane: the point is equality with semindex.embed and the
# model's own tokenizer (token-id inputs, usage counts), on a server started once.
pytestmark = pytest.mark.slow

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra: pip install -e '.[dev]'")

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["how do black holes form", "baking bread at home", "Ünïcode — and emoji 🚀 too"]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`semindex index samples/sample.jsonl` then `semindex serve --api-key KEY` (default served models)."""
    srv = ServeProcess(cli_store(tmp_path_factory.mktemp("oai")), "--api-key", KEY).wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(served: ServeProcess) -> Any:
    return openai.OpenAI(base_url=f"{served.base}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_openai_client_vectors_equal_semindex_embed(client: Any, encoder: Any) -> None:
    expected = semindex.embed(TEXTS)
    # The client asks for base64 by default and decodes it; ask for floats explicitly too.
    for fmt in (None, "float", "base64"):
        kwargs = {} if fmt is None else {"encoding_format": fmt}
        resp = client.embeddings.create(model=MODEL, input=TEXTS, **kwargs)
        assert resp.model == MODEL and resp.object == "list"
        assert [d.index for d in resp.data] == [0, 1, 2]
        if fmt == "base64":  # the client hands the raw base64 string through when asked for it
            got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data])
        else:
            got = np.asarray([d.embedding for d in resp.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert resp.usage.prompt_tokens == sum(count_tokens(TEXTS)) == resp.usage.total_tokens

    one = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0])  # an alias of the default
    np.testing.assert_allclose(one.data[0].embedding, expected[0], atol=1e-5)
    assert one.model == MODEL


def test_token_id_inputs_are_decoded_with_the_models_tokenizer(served: ServeProcess, encoder: Any) -> None:
    tok = encoder.model.tokenizer
    ids = [tok.encode(t, add_special_tokens=False) for t in TEXTS[:2]]
    r = httpx.post(f"{served.base}/v1/embeddings", headers=AUTH, timeout=60,
                   json={"model": MODEL, "input": ids, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    np.testing.assert_allclose(got, semindex.embed(TEXTS[:2]), atol=1e-5)
    single = httpx.post(f"{served.base}/v1/embeddings", headers=AUTH, json={"model": MODEL, "input": ids[0]}, timeout=60)
    assert len(single.json()["data"]) == 1  # one flat token list is one input

    bad = httpx.post(f"{served.base}/v1/embeddings", headers=AUTH, json={"model": MODEL, "input": [[100_000]]})
    assert bad.status_code == 400
    assert "not in the vocabulary" in bad.json()["error"]["message"] and bad.json()["error"]["param"] == "input"


def test_unknown_model_is_a_404_in_openais_error_shape(client: Any, served: ServeProcess) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert exc.value.status_code == 404
    raw = httpx.post(f"{served.base}/v1/embeddings", headers=AUTH, json={"model": "/etc", "input": "x"}).json()
    assert set(raw) == {"error"} and set(raw["error"]) == {"message", "type", "param", "code"}
    assert raw["error"]["type"] == "invalid_request_error" and raw["error"]["param"] == "model"
    assert raw["error"]["code"] == "model_not_found" and MODEL in raw["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("../../etc/passwd")


def test_models_lists_what_is_served(client: Any) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_same_bearer_key_as_the_rest_of_the_api(served: ServeProcess) -> None:
    wrong = openai.OpenAI(base_url=f"{served.base}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=MODEL, input="x")
    assert httpx.get(f"{served.base}/v1/models").status_code == 401


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": MODEL, "input": "x", "dimensions": 128}, "dimensions", "cannot shorten"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions", "positive integer"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"model": MODEL, "input": []}, "input", "non-empty"),
        ({"model": MODEL, "input": ["ok", "  "]}, "input", "input[1] is empty"),
        ({"model": MODEL, "input": ["x"] * 2049}, "input", "at most 2048"),
        ({"model": MODEL, "input": "x" * 100_001}, "input", "at most 100000"),
        ({"model": MODEL, "input": [[1] * 8193]}, "input", "at most 8192"),
        ({"model": MODEL, "input": [1.5]}, "input", "must be a string"),
        ({"model": MODEL}, "input", "'input' is required"),
        ({"input": "x"}, "model", "'model' is required"),
        ({"model": MODEL, "input": "x", "temperature": 1}, "temperature", "unknown parameter"),
    ],
)
def test_invalid_requests_are_400_with_the_parameter_named(
    served: ServeProcess, body: dict[str, Any], param: str, message: str
) -> None:
    r = httpx.post(f"{served.base}/v1/embeddings", headers=AUTH, json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and message in err["message"] and err["type"] == "invalid_request_error"


def test_dimensions_equal_to_the_models_is_accepted(client: Any) -> None:
    resp = client.embeddings.create(model=MODEL, input="x", dimensions=384, encoding_format="float")
    assert len(resp.data[0].embedding) == 384


def test_served_models_are_a_server_option(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = ServeProcess(tmp_path_factory.mktemp("oai2") / "store", "--embed-model", "hash:32").wait()
    try:
        c = openai.OpenAI(base_url=f"{srv.base}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in c.models.list()] == ["hash:32"]
        resp = c.embeddings.create(model="hash:32", input=["a b", "c"], encoding_format="float")
        np.testing.assert_allclose([d.embedding for d in resp.data], semindex.embed(["a b", "c"], model="hash:32"),
                                   atol=1e-6)
        with pytest.raises(openai.NotFoundError):  # the default model is not served when the option is given
            c.embeddings.create(model=MODEL, input="x")
    finally:
        assert srv.stop() == 0


def test_langchain_openai_embeddings_client(served: ServeProcess, encoder: Any) -> None:
    """LangChain's OpenAIEmbeddings against the server; it must send text, not its tiktoken ids."""
    lc = pytest.importorskip("langchain_openai", reason="langchain-openai is in the dev extra")
    emb = lc.OpenAIEmbeddings(model=MODEL, base_url=f"{served.base}/v1", api_key=KEY, max_retries=0,
                              check_embedding_ctx_length=False)  # True would split with tiktoken (a download)
    np.testing.assert_allclose(emb.embed_documents(TEXTS), semindex.embed(TEXTS), atol=1e-5)
    np.testing.assert_allclose(emb.embed_query(TEXTS[0]), semindex.embed(TEXTS[0]), atol=1e-5)
