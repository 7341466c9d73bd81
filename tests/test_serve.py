"""`attngan-fast serve`: what a request computes and what it may ask (studio.py), and the page itself in a
real browser (headless Chromium through Selenium), with nothing reaching past this machine: the browser's
requests and the server's own connections are both watched."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
import torch

from attngan_fast.cli import main as cli
from attngan_fast.serve import MAX_REQUEST_BYTES
from attngan_fast.studio import (CELL, MAX_CAPTION_CHARS, MAX_CAPTION_WORDS, TOP_WORDS, RequestError, Studio,
                                 held_out_captions)
from attngan_fast.train.gan import load_generator
from host_sync import free_port

CAPTION = "this bird has wings that are blue and has a red belly"


@pytest.fixture(scope="module")
def studio(trained, synthetic_root):
    netG, text_encoder, vocab, cfg = load_generator(trained[1])
    captions, _ = held_out_captions(cfg, synthetic_root)
    return Studio(netG, text_encoder, vocab, torch.device("cpu"), max_images=3, test_captions=captions,
                  checkpoint=trained[1])


def test_a_request_gives_every_stage_and_the_top_words_of_each_attention_stage(studio):
    result = studio.generate(CAPTION, seed=4, n_images=2)
    stages = len(studio.stages)
    assert result.words == CAPTION.split() and not result.dropped
    assert [label for _, label in result.stages] == [f"image {k}, stage {i + 1} ({s} px)" for k in (1, 2)
                                                     for i, s in enumerate(studio.stages)]
    assert len(result.maps) == 2 * (stages - 1) * TOP_WORDS
    for n, (_, label) in enumerate(result.maps):
        word, where = label.split(" ", 1)
        assert word in result.words and where == f"(image {n // TOP_WORDS + 1}, stage 2)"
    assert result.grid.size[0] == (stages + (stages - 1) * TOP_WORDS) * CELL
    assert all(picture.size == (CELL, CELL) for picture, _ in result.stages + result.maps)
    again = studio.generate(CAPTION, seed=4, n_images=2)
    assert again.grid.tobytes() == result.grid.tobytes(), "the seed fixes the noise"
    assert studio.generate(CAPTION, seed=5, n_images=2).grid.tobytes() != result.grid.tobytes()


def test_changing_one_word_keeps_the_noise(studio):
    before, after = studio.compare(CAPTION, "Blue", "green", seed=3, n_images=1)
    assert before.caption == CAPTION and after.caption == CAPTION.replace("blue", "green")
    assert before.grid.tobytes() == studio.generate(CAPTION, 3, 1).grid.tobytes()
    assert after.grid.tobytes() == studio.generate(after.caption, 3, 1).grid.tobytes()
    assert studio.change_word("a red bird, red belly", "red", "blue") == "a blue bird, red belly"


@pytest.mark.parametrize("args, message", [
    (("",), "type a caption"),
    (("x" * (MAX_CAPTION_CHARS + 1),), f"has {MAX_CAPTION_CHARS + 1} characters; this page takes at most {MAX_CAPTION_CHARS}"),
    ((" ".join(["red"] * (MAX_CAPTION_WORDS + 1)),), f"has {MAX_CAPTION_WORDS + 1} words; this page takes at most"),
    ((CAPTION, 0, 4), "asked for 4 images; this page makes 1 to 3 per request"),
    ((CAPTION, 0, 0), "asked for 0 images"),
    ((CAPTION, -1, 1), "the seed must be between 0 and"),
    ((CAPTION, 1.5, 1), "the seed must be a whole number"),
    ((CAPTION, "many", 1), "the seed must be a whole number"),
    ((CAPTION, None, 1), "type the seed"),
    ((CAPTION, 10**400, 1), "the seed must be between 0 and"),
    ((CAPTION, "1" * 400, 1), "the seed must be a whole number"),
    ((CAPTION, float("nan"), 1), "the seed must be a whole number"),
    (("zzz qqq",), "no word of the caption is in the model's vocabulary"),
])
def test_what_a_request_may_ask_is_bounded_with_a_message(studio, args, message):
    with pytest.raises(RequestError, match=message):
        studio.generate(*args)


def test_unknown_words_are_left_out_and_said(studio):
    result = studio.generate("this bird has wings that are blue and a purplish zorgle", 0, 1)
    assert result.dropped == ["purplish", "zorgle"] and "zorgle" not in result.words


@pytest.mark.parametrize("word, new, message", [("blue", "two words", "the new word must be one word"),
                                                ("violet", "red", "'violet' is not a word of the caption"),
                                                ("", "red", "the word to change must be one word")])
def test_a_word_change_that_cannot_be_made_is_said(studio, word, new, message):
    with pytest.raises(RequestError, match=message):
        studio.compare(CAPTION, word, new, 0, 1)


def test_a_word_change_the_model_cannot_read_is_refused_and_unknown_words_are_named(studio):
    """A probe found Compare showing 'this bird has xyzzy wings' as if the model had read 'xyzzy', and two
    identical pictures for a replacement outside the vocabulary."""
    pytest.importorskip("gradio")
    from attngan_fast.serve import build_page

    with pytest.raises(RequestError, match="'zorgle' is not in the model's vocabulary"):
        studio.compare(CAPTION, "blue", "zorgle", 0, 1)
    with pytest.raises(RequestError, match="the new word 'Blue' is the word it replaces"):
        studio.compare(CAPTION, "blue", "Blue", 0, 1)
    (run_compare,) = {f.fn for f in build_page(studio).fns.values() if f.name == "run_compare"}
    said = run_compare(CAPTION + " xyzzy", "blue", "green", 0, 1)[0]
    assert said == f"*{CAPTION}* beside *{CAPTION.replace('blue', 'green')}* (seed 0); not in the vocabulary, left " \
                   "out: xyzzy.", said


def test_test_captions_come_from_the_generators_data(trained, synthetic_root, tmp_path):
    _, _, _, cfg = load_generator(trained[1])
    captions, note = held_out_captions(cfg, synthetic_root)
    assert len(captions) == len(set(captions)) == 200 and note == f"200 test captions of {synthetic_root}"
    assert all(caption == caption.lower() for caption in captions)
    none, why = held_out_captions(cfg, tmp_path / "elsewhere")
    assert none == [] and "is not on this machine (give --data DIR)" in why


def test_serve_without_a_checkpoint_or_the_demo_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["serve"]) == 2
    err = capsys.readouterr().err
    assert "no --checkpoint given, and the demo's generator demo/attngan/latest.pt is not there" in err
    assert cli(["serve", "--checkpoint", "G.pt"]) == 2
    assert "--checkpoint G.pt does not exist" in capsys.readouterr().err
    assert cli(["serve", "--checkpoint", "G.pt", "--max-images", "0"]) == 2
    assert "--max-images must be between 1 and 64, got 0" in capsys.readouterr().err
    assert cli(["serve", "--checkpoint", str(tmp_path)]) == 2
    assert f"--checkpoint {tmp_path} is a folder, not a checkpoint file" in capsys.readouterr().err


def test_serve_help_states_what_a_request_may_ask(capsys):
    from attngan_fast.serve import MAX_REQUEST_BYTES, QUEUE_SIZE
    from attngan_fast.studio import MAX_SEED

    with pytest.raises(SystemExit):
        cli(["serve", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    for fact in (f"at most {MAX_CAPTION_CHARS} characters and {MAX_CAPTION_WORDS} words", f"from 0 to {MAX_SEED}",
                 f"{QUEUE_SIZE} may wait", f"at most {MAX_REQUEST_BYTES // 1024} KiB"):
        assert fact in said, fact


def test_a_named_data_root_that_is_not_there_is_an_error(trained, tmp_path, capsys):
    assert cli(["serve", "--checkpoint", str(trained[1]), "--data", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert f"--data {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err


def test_what_the_page_echoes_is_shown_as_typed():
    """A caption or word is echoed into Markdown fields: an image link typed there must stay text (the
    browser would fetch it), HTML too, and the echo is bounded."""
    pytest.importorskip("gradio")
    from attngan_fast.serve import _refusal, plain

    typed = "red ![x](http://example.com/x.png) <img src=x onerror=alert(1)> [a](b) *b* `c` # d"
    shown = plain(typed)
    assert re.search(r"(?<!\\)[!\[\]`*<]", shown) is None  # every opener escaped (and < an entity)
    assert re.sub(r"\\(.)", r"\1", shown.replace("&lt;", "<").replace("&amp;", "&")) == typed  # nothing lost
    assert plain("a\n# b\n\n![c](d)") == "a \\# b \\!\\[c\\](d)"  # one line
    assert len(plain("x" * 10_000)) == 401 and _refusal("a [b](c)").startswith("**Not generated:** a \\[b\\]")


def test_both_buttons_share_one_queue_of_one_generation_at_a_time(studio):
    pytest.importorskip("gradio")
    from attngan_fast.serve import build_page

    page = build_page(studio)
    generating = [f for f in page.fns.values() if f.name in ("run", "run_compare")]
    assert len(generating) == 3  # the button, Enter in the caption, and Compare
    assert {f.concurrency_id for f in generating} == {"generator"}
    assert {f.concurrency_limit for f in generating} == {1}


def test_a_request_body_past_the_limit_is_refused_before_it_is_read():
    pytest.importorskip("gradio")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from attngan_fast.serve import BodyLimit

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/", echo, methods=["POST"])], middleware=[Middleware(BodyLimit, limit=100)])
    client = TestClient(app)
    assert client.post("/", content=b"x" * 100).text == "100"
    refused = client.post("/", content=b"x" * 101)
    assert refused.status_code == 413 and "at most 100 bytes" in refused.text
    chunked = client.post("/", content=iter([b"x" * 60, b"x" * 60]))  # no Content-Length: counted as it comes
    assert chunked.status_code == 413

    # Gradio's routes are FastAPI's, whose body parsing turns any error of the read into its own 400:
    # the 413 must still be what the client gets.
    from fastapi import FastAPI

    api = FastAPI(middleware=[Middleware(BodyLimit, limit=100)])

    @api.post("/join")
    def join(body: dict):
        return {"keys": len(body)}

    client = TestClient(api)
    assert client.post("/join", json={"a": 1}).json() == {"keys": 1}
    chunked = client.post("/join", content=iter([b'{"a": "' + b"x" * 60, b"x" * 60 + b'"}']),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "at most 100 bytes" in chunked.text


def test_the_page_keeps_its_images_in_a_private_folder_that_goes_with_it(tmp_path):
    pytest.importorskip("gradio")
    probe = ("import os, stat; from attngan_fast.serve import import_gradio; import_gradio(); "
             "from gradio.utils import get_upload_folder; folder = os.environ['GRADIO_TEMP_DIR']; "
             "print(folder, oct(stat.S_IMODE(os.stat(folder).st_mode)), get_upload_folder() == folder)")
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    folder, mode, used = out.stdout.split()
    assert mode == "0o700" and used == "True" and not os.path.exists(folder)  # removed at exit

    # Stopped by SIGTERM (kill, docker stop) as the command line handles it: removed too.
    waiting = ("import os, signal, time; from attngan_fast.cli import _terminated; from attngan_fast.serve import "
               "import_gradio; import_gradio(); signal.signal(signal.SIGTERM, _terminated); "
               "print(os.environ['GRADIO_TEMP_DIR'], flush=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", waiting], stdout=subprocess.PIPE, text=True, env=env)
    folder = process.stdout.readline().strip()
    assert os.path.isdir(folder)
    process.terminate()
    assert process.wait(timeout=60) == 128 + 15 and not os.path.exists(folder)


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed (.[app])")
def test_a_port_already_taken_is_one_line(trained, synthetic_root, capsys, monkeypatch):
    import socket

    from attngan_fast.serve import OFFLINE_ENV

    for key, value in OFFLINE_ENV.items():  # serve sets them; the test's process gets its own back afterwards
        monkeypatch.setenv(key, value)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert cli(["serve", "--checkpoint", str(trained[1]), "--data", str(synthetic_root), "--port", str(port),
                    "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"attngan-fast: error: --port {port}: 127.0.0.1:{port} is taken by another program; "
                   "give another --port"]
    assert cli(["serve", "--checkpoint", str(trained[1]), "--host", "not-a-host.invalid", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("attngan-fast: error: --host not-a-host.invalid is not an address")


# ------------------------------------------------------------------------------------ the page in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                                else None)
# Everything Chromium would reach on its own (updates, sync, field trials, QUIC) is off, its profile is
# new, and no host name resolves: the page must come whole from the server.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2000",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]

# Imported by the server's Python before anything else: every connection it tries that does not go to
# this machine is refused and written down.
NETWORK_GUARD = textwrap.dedent('''
    import os, socket
    _log = os.environ["ATTNGAN_TEST_NETWORK_LOG"]
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    _LOCAL = ("127.", "::1", "localhost", "0.0.0.0")

    def _local(host):
        return isinstance(host, str) and host.startswith(_LOCAL)

    def _note(what):
        with open(_log, "a") as fh:
            fh.write(what + "\\n")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _note(f"connect {address!r}")
            raise OSError("the test allows no connection beyond this machine")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            _note(f"connect_ex {address!r}")
            return 111
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _local(host if isinstance(host, str) else host.decode()):
            _note(f"getaddrinfo {host!r}")
            raise socket.gaierror("the test resolves no name beyond this machine")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
''')


def _missing_for_the_browser_test() -> str | None:
    for module in ("selenium", "gradio"):
        if importlib.util.find_spec(module) is None:  # found, not imported: collection stays quick
            return f"{module} is not installed (pip install -e \".[dev]\")"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def server(trained, synthetic_root, tmp_path):
    """`attngan-fast serve` in a process of its own, behind the network guard; yields (url, network log)."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    network_log = tmp_path / "network.log"
    network_log.write_text("")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]),
           "ATTNGAN_TEST_NETWORK_LOG": str(network_log), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    out = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "attngan_fast.cli", "serve", "--checkpoint", str(trained[1]),
                                "--data", str(synthetic_root), "--port", str(port), "--max-images", "3",
                                "--device", "cpu"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while f"attngan-fast serve: open {url} in your browser" not in (tmp_path / "server.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, network_log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()


def _browser(profile):
    """Headless Chromium with its profile in ``profile`` (the test's own folder: nothing left in /tmp)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def _loaded(driver, selector: str) -> list[int]:
    """Natural widths of the images under ``selector`` (0 for one that did not load)."""
    return [driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", img)
            for img in driver.find_elements("css selector", f"{selector} img")]


@pytest.mark.slow
@pytest.mark.skipif(_missing_for_the_browser_test() is not None, reason=str(_missing_for_the_browser_test()))
def test_the_page_in_headless_chromium_shows_the_images_and_word_maps_offline(server, studio, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    url, network_log = server
    driver = _browser(tmp_path / "chromium-profile")
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 180)
        caption = wait.until(lambda d: d.find_element("css selector", "#caption textarea"))
        stages, per_image = len(studio.stages), (len(studio.stages) - 1) * TOP_WORDS

        # A caption typed, 2 images (the slider's default): every stage and every word map arrives.
        caption.send_keys(CAPTION)
        driver.find_element("css selector", "#generate").click()
        wait.until(lambda d: len(_loaded(d, "#maps")) == 2 * per_image and all(_loaded(d, "#maps")))
        wait.until(lambda d: len(_loaded(d, "#stages")) == 2 * stages and all(_loaded(d, "#stages")))
        wait.until(lambda d: _loaded(d, "#grid") == [(stages + per_image) * CELL])
        status = driver.find_element("css selector", "#status").text
        assert status == f"2 images of {CAPTION} (seed 0).", status
        labels = driver.find_element("css selector", "#maps").text
        assert "(image 1, stage 2)" in labels and "(image 2, stage 2)" in labels
        driver.save_screenshot(str(tmp_path / "page.png"))

        # Too much asked: a clear message in the page, and nothing generated.
        caption.clear()
        caption.send_keys("x" * (MAX_CAPTION_CHARS + 10))
        driver.find_element("css selector", "#generate").click()
        wait.until(lambda d: "Not generated" in d.find_element("css selector", "#status").text)
        assert driver.find_element("css selector", "#status").text == (
            f"Not generated: the caption has {MAX_CAPTION_CHARS + 10} characters; this page takes at most "
            f"{MAX_CAPTION_CHARS}.")
        assert _loaded(driver, "#grid") == [] and _loaded(driver, "#maps") == []

        # One word changed: both grids side by side, labelled with their captions.
        caption.clear()
        caption.send_keys(CAPTION)
        driver.find_element("css selector", "#word textarea").send_keys("blue")
        driver.find_element("css selector", "#replacement textarea").send_keys("green")
        driver.find_element("css selector", "#compare").click()
        wait.until(lambda d: all(_loaded(d, f"#{side}") == [(stages + per_image) * CELL] for side in ("left", "right")))
        changed = CAPTION.replace("blue", "green")
        assert driver.find_element("css selector", "#compare-status").text == f"{CAPTION} beside {changed} (seed 0)."
        assert changed in driver.find_element("css selector", "#right").text

        # An image link typed as the new word is refused and echoed as the text it is, never fetched.
        typed = "![y](http://example.org/r.png)"
        driver.find_element("css selector", "#replacement textarea").clear()
        driver.find_element("css selector", "#replacement textarea").send_keys(typed)
        driver.find_element("css selector", "#compare").click()
        wait.until(lambda d: "Not generated" in d.find_element("css selector", "#compare-status").text)
        assert driver.find_element("css selector", "#compare-status").text == (
            f"Not generated: the new word must be one word, got '{typed}'.")
        assert driver.find_elements("css selector", "#compare-status img") == []

        requested = _requested_urls(driver)
    finally:
        driver.quit()
    beyond = [u for u in requested if u.split(":", 1)[0] in ("http", "https", "ws", "wss")
              and not u.split("//", 1)[1].startswith(url.split("//", 1)[1].rstrip("/"))]
    assert requested and not beyond, f"the page reached past its server: {beyond[:5]}"
    too_big = urllib.request.Request(url + "gradio_api/queue/join", data=b"x" * (MAX_REQUEST_BYTES + 1), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(too_big, timeout=30)
    assert refused.value.code == 413
    assert network_log.read_text() == "", "the server tried to reach past this machine"


def test_the_demo_page_says_how_to_open_the_server(tmp_path):
    from attngan_fast.demo import FIGURE5, write_report
    from test_demo import _summary

    page = write_report(tmp_path, _summary(0.6), FIGURE5).read_text()
    commands = page.split("<pre>")[1].split("</pre>")[0].splitlines()
    root = tmp_path.resolve()
    assert commands[0] == f"attngan-fast serve --checkpoint {root / 'attngan' / 'latest.pt'} --data {root / 'data'}"
    assert "open the\nlocal address it prints (port 7860 on 127.0.0.1" in page and 'pip install -e ".[app]"' in page
