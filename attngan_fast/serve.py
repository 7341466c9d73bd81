"""``attngan-fast serve``: a local web page (Gradio) to type a caption, or pick one of the test captions,
choose a seed and how many images, and see every stage's image with, per attention stage, the most
attended words and their maps over the image (the paper's Figure 1/4); and to change one word and see
both captions' images side by side under the same noise (Figure 5). What it computes is ``studio.py``.

The page is for the machine it runs on: it binds 127.0.0.1 unless ``--host`` says otherwise, and it
never reaches the internet: Gradio's analytics and version check are off, no share link is made, the
server-side rendering (a Node process) is off, and the page's fonts are the browser's own (the test
drives it in a Chromium that may reach nothing but this server). One request runs at a time, and at
most ``QUEUE_SIZE`` wait; each asks for a bounded caption and number of images (``studio.check``).
Gradio is an optional extra: ``pip install -e ".[app]"``.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

from .paths import private_temp_folder
from .studio import (MAX_CAPTION_CHARS, MAX_CAPTION_WORDS, MAX_SEED, TOP_WORDS, RequestError, Studio,
                     held_out_captions)

QUEUE_SIZE = 16
MAX_REQUEST_BYTES = 64 * 1024  # a request's body: a caption of MAX_CAPTION_CHARS and Gradio's envelope fit many times
CACHE_SECONDS = 3600  # the images a page showed stay this long in the server's private temporary folder
SANS = ["ui-sans-serif", "system-ui", "sans-serif"]  # the browser's fonts: nothing fetched for them
MONO = ["ui-monospace", "monospace"]
BUTTONS = ["download", "fullscreen"]  # not "share", which posts to Hugging Face
CSS = "#status p, #compare-status p {font-size: 1.05em} .gallery-item img {image-rendering: pixelated}"

# Read by Gradio and Hugging Face's hub client when they are imported: no telemetry, no version check.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
               "DO_NOT_TRACK": "1"}


class ServeError(ValueError):
    """What ``serve`` cannot start with: no checkpoint, Gradio not installed."""


def import_gradio():
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    if "GRADIO_TEMP_DIR" not in os.environ:
        # Gradio keeps every image it serves in a temporary folder (read when it is imported); by default a
        # shared, world-readable /tmp/gradio that nothing empties. Ours is private and goes with the process.
        os.environ["GRADIO_TEMP_DIR"] = str(private_temp_folder("attngan-fast-serve-"))
    try:
        import gradio
    except ImportError:
        raise ServeError('the page needs Gradio, an optional extra: pip install -e ".[app]" '
                         '(or pip install "attngan-fast[app]")') from None
    return gradio


def plain(text: str, limit: int = 400) -> str:
    """``text`` (the user's words, or a message quoting them) for a Markdown field, shown as typed: every
    character Markdown or HTML would read escaped (an image link typed into a caption would otherwise
    make the browser fetch it), and at most ``limit`` characters of it."""
    text = " ".join(text.split())  # one line: no heading, list or code block can start in it
    text = text if len(text) <= limit else text[:limit] + "…"
    # What opens an image, link, emphasis, code, HTML or a table cell; escaped, each shows as typed.
    # ('.' and ')' stay: the page turns a typed URL into a link text, and an escape there would show.)
    text = re.sub(r"([\\`*_\[\]!|~>#])", r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _refusal(text: str) -> str:
    return f"**Not generated:** {plain(text)}."


class BodyLimit:
    """ASGI middleware: a request whose body is larger than ``limit`` bytes is answered 413 before its
    body is read (by its Content-Length) or, sent in chunks, as soon as it passes the limit."""

    def __init__(self, app, limit: int = MAX_REQUEST_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._refuse(send)
        seen, started, refused = 0, False, False

        async def guarded_send(message):
            nonlocal started
            if refused:  # the app's answer to the aborted read (FastAPI's 400) after our 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def bounded_receive():
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not refused:
                if not started:
                    await self._refuse(send)
                refused = True
                raise _TooLarge
            return message

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except _TooLarge:  # the app let the aborted read through: the 413 is sent already
            pass

    async def _refuse(self, send):
        body = f"a request to this page may hold at most {self.limit} bytes".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def build_page(studio: Studio, *, note: str = ""):
    """The Gradio Blocks of the page (not launched)."""
    gr = import_gradio()
    stages = " → ".join(f"{s} px" for s in studio.stages)
    with gr.Blocks(title="attngan-fast", analytics_enabled=False, delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown(f"# attngan-fast: type a sentence, watch the attention\n"
                    f"Generator `{studio.checkpoint}`: {len(studio.stages)} stages ({stages}), a vocabulary of "
                    f"{len(studio.vocab)} words. Captions up to {MAX_CAPTION_CHARS} characters and "
                    f"{MAX_CAPTION_WORDS} words, 1 to {studio.max_images} images per request. {note}")
        with gr.Row():
            caption = gr.Textbox(label="Caption", lines=2, scale=3, elem_id="caption",
                                 placeholder="this bird has wings that are blue and has a red belly")
            pick = gr.Dropdown(choices=studio.test_captions, value=None, label="…or pick a test caption", scale=2,
                               elem_id="pick", interactive=bool(studio.test_captions))
        with gr.Row():
            # No minimum or rounding here: every seed the field sends gets its sentence from studio.check.
            seed = gr.Number(value=0, label=f"Seed (the noise, 0 to {MAX_SEED})", elem_id="seed")
            count = gr.Slider(1, studio.max_images, value=min(2, studio.max_images), step=1, label="Images",
                              elem_id="count")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status", latex_delimiters=[])  # a typed $$x$$ stays text too
        grid = gr.Image(label="Every stage, then the five most attended words per attention stage (one row per image)",
                        type="pil", format="png", interactive=False, elem_id="grid", buttons=BUTTONS)
        maps = gr.Gallery(label="Word maps: the most attended words over the image of their stage", columns=TOP_WORDS,
                          format="png", elem_id="maps", interactive=False, height="auto", buttons=BUTTONS)
        stage_images = gr.Gallery(label="Every stage's image", columns=6, format="png", elem_id="stages",
                                  interactive=False, height="auto", buttons=BUTTONS)

        gr.Markdown("## Change one word (the paper's Figure 5)\nThe same seed, so the same noise: what changes "
                    "comes from the word.")
        with gr.Row():
            word = gr.Textbox(label="Word to change", elem_id="word", scale=1)
            replacement = gr.Textbox(label="New word", elem_id="replacement", scale=1)
            compare = gr.Button("Compare", elem_id="compare", scale=1)
        compare_status = gr.Markdown(elem_id="compare-status", latex_delimiters=[])
        with gr.Row():
            left = gr.Image(label="the caption", type="pil", format="png", interactive=False, elem_id="left",
                            buttons=BUTTONS)
            right = gr.Image(label="one word changed", type="pil", format="png", interactive=False, elem_id="right",
                             buttons=BUTTONS)

        def run(text, seed_value, n):
            try:
                result = studio.generate(text, seed_value, n)
            except RequestError as err:
                return _refusal(str(err)), None, [], []
            said = f"{int(n)} image{'s' if int(n) > 1 else ''} of *{plain(' '.join(result.words))}* (seed {int(seed_value)})"
            if result.dropped:
                said += f"; not in the vocabulary, left out: {plain(', '.join(result.dropped))}"
            return said + ".", result.grid, result.maps, result.stages

        def run_compare(text, old, new, seed_value, n):
            try:
                before, after = studio.compare(text, old, new, seed_value, n)
            except RequestError as err:
                return (_refusal(str(err)), gr.update(value=None, label="the caption"),
                        gr.update(value=None, label="one word changed"))
            # the words the model reads, as run() shows them: an unknown word of the caption is named, not implied
            said = f"*{plain(' '.join(before.words))}* beside *{plain(' '.join(after.words))}* (seed {int(seed_value)})"
            dropped = list(dict.fromkeys(before.dropped + after.dropped))
            if dropped:
                said += f"; not in the vocabulary, left out: {plain(', '.join(dropped))}"
            return (said + ".",
                    gr.update(value=before.grid, label=before.caption), gr.update(value=after.grid, label=after.caption))

        pick.change(lambda chosen: chosen or gr.update(), inputs=pick, outputs=caption, queue=False)
        # One queue for both buttons: one generation at a time, whichever asked (the model is shared).
        for trigger in (go.click, caption.submit):
            trigger(run, inputs=[caption, seed, count], outputs=[status, grid, maps, stage_images],
                    concurrency_id="generator", concurrency_limit=1)
        compare.click(run_compare, inputs=[caption, word, replacement, seed, count],
                      outputs=[compare_status, left, right], concurrency_id="generator", concurrency_limit=1)
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return page


def default_checkpoint() -> Path:
    from .demo import DEFAULT_OUT

    return Path(DEFAULT_OUT) / "attngan" / "latest.pt"


def open_studio(checkpoint: str | Path | None, *, data: str | Path | None = None, device: str = "auto",
                max_images: int) -> tuple[Studio, str]:
    """(the studio for a generator checkpoint, a note on its test captions); ``checkpoint`` None: the demo's."""
    from .train.gan import load_generator
    from .train.runtime import pick_device

    if checkpoint is None:
        checkpoint = default_checkpoint()
        if not checkpoint.is_file():
            raise ServeError(f"no --checkpoint given, and the demo's generator {checkpoint} is not there: run "
                             "`attngan-fast demo` first, or give --checkpoint G.pt (train's latest.pt)")
    if Path(checkpoint).is_dir():
        raise ServeError(f"--checkpoint {checkpoint} is a folder, not a checkpoint file (train's latest.pt)")
    if not Path(checkpoint).is_file():
        raise ServeError(f"--checkpoint {checkpoint} does not exist (a generator checkpoint: train's latest.pt)")
    if data is not None and not Path(data).is_dir():
        raise ServeError(f"--data {data} is not a folder (a dataset root for the test captions)")
    dev = pick_device(device)
    netG, text_encoder, vocab, cfg = load_generator(checkpoint, dev)
    if data is None and not Path(cfg.data.root).is_dir() and default_checkpoint().resolve() == Path(checkpoint).resolve():
        data = default_checkpoint().parent.parent / "data"  # the demo's data, wherever the demo was run from
    captions, note = held_out_captions(cfg, data)
    return Studio(netG, text_encoder, vocab, dev, max_images=max_images, test_captions=captions,
                  checkpoint=checkpoint), note


def serve(checkpoint: str | Path | None = None, *, host: str = "127.0.0.1", port: int | None = None,
          data: str | Path | None = None, device: str = "auto", max_images: int = 8) -> None:
    """Start the page and block until interrupted."""
    gr = import_gradio()
    check_address(host, port)  # before the model loads
    studio, note = open_studio(checkpoint, data=data, device=device, max_images=max_images)
    page = build_page(studio, note=note + ".")
    print(f"attngan-fast serve: {studio.checkpoint} on {studio.device}; {note}", flush=True)
    theme = gr.themes.Default(font=SANS, font_mono=MONO)
    # quiet: Gradio's own lines would suggest a public share link; this page says where it is itself.
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                    mcp_server=False, enable_monitoring=False, footer_links=[], theme=theme, css=CSS, show_error=False,
                    quiet=True, prevent_thread_lock=True, app_kwargs={"middleware": [_body_limit()]})
    except OSError:  # taken between the check and the launch, or no free port from 7860 on
        where = f"--port {port}: {host}:{port} is taken" if port is not None else f"no free port from 7860 on {host}"
        raise ServeError(f"cannot listen: {where}; give another --port") from None
    print(f"attngan-fast serve: open {page.local_url} in your browser (Ctrl+C stops the server)", flush=True)
    page.block_thread()


def _body_limit():
    from starlette.middleware import Middleware

    return Middleware(BodyLimit, limit=MAX_REQUEST_BYTES)


def check_address(host: str, port: int | None) -> None:
    """ServeError naming the flag when the page could not listen on ``host``:``port`` (``port`` None:
    only whether ``host`` is an address of this machine)."""
    try:  # "[::1]" as Gradio takes it
        found = socket.getaddrinfo(host.strip("[]"), port or 0, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ServeError(f"--host {host} is not an address this machine can resolve ({err.strerror})") from None
    for family, kind, _, _, address in dict.fromkeys(found):  # every address the server would listen on
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets them
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise ServeError(f"--port {port}: {host}:{port} is taken by another program; give another "
                                     "--port") from None
                if err.errno in (errno.EACCES, errno.EPERM):
                    raise ServeError(f"--port {port}: not allowed to listen on {host}:{port} ({err.strerror})") from None
                raise ServeError(f"--host {host} is not an address of this machine ({err.strerror})") from None
