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

import os
from pathlib import Path

from .studio import MAX_CAPTION_CHARS, MAX_CAPTION_WORDS, TOP_WORDS, RequestError, Studio, held_out_captions

QUEUE_SIZE = 16
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
    try:
        import gradio
    except ImportError:
        raise ServeError('the page needs Gradio, an optional extra: pip install -e ".[app]" '
                         '(or pip install "attngan-fast[app]")') from None
    return gradio


def _refusal(text: str) -> str:
    return f"**Not generated:** {text}."


def build_page(studio: Studio, *, note: str = ""):
    """The Gradio Blocks of the page (not launched)."""
    gr = import_gradio()
    stages = " → ".join(f"{s} px" for s in studio.stages)
    with gr.Blocks(title="attngan-fast", analytics_enabled=False) as page:
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
            seed = gr.Number(value=0, precision=0, label="Seed (the noise)", elem_id="seed", minimum=0)
            count = gr.Slider(1, studio.max_images, value=min(2, studio.max_images), step=1, label="Images",
                              elem_id="count")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
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
        compare_status = gr.Markdown(elem_id="compare-status")
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
            said = f"{int(n)} image{'s' if int(n) > 1 else ''} of *{' '.join(result.words)}* (seed {int(seed_value)})"
            if result.dropped:
                said += f"; not in the vocabulary, left out: {', '.join(result.dropped)}"
            return said + ".", result.grid, result.maps, result.stages

        def run_compare(text, old, new, seed_value, n):
            try:
                before, after = studio.compare(text, old, new, seed_value, n)
            except RequestError as err:
                return (_refusal(str(err)), gr.update(value=None, label="the caption"),
                        gr.update(value=None, label="one word changed"))
            return (f"*{before.caption}* beside *{after.caption}* (seed {int(seed_value)}).",
                    gr.update(value=before.grid, label=before.caption), gr.update(value=after.grid, label=after.caption))

        pick.change(lambda chosen: chosen or gr.update(), inputs=pick, outputs=caption, queue=False)
        for trigger in (go.click, caption.submit):
            trigger(run, inputs=[caption, seed, count], outputs=[status, grid, maps, stage_images])
        compare.click(run_compare, inputs=[caption, word, replacement, seed, count],
                      outputs=[compare_status, left, right])
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
    if not Path(checkpoint).is_file():
        raise ServeError(f"--checkpoint {checkpoint} does not exist (a generator checkpoint: train's latest.pt)")
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
    studio, note = open_studio(checkpoint, data=data, device=device, max_images=max_images)
    page = build_page(studio, note=note + ".")
    print(f"attngan-fast serve: {studio.checkpoint} on {studio.device}; {note}", flush=True)
    theme = gr.themes.Default(font=SANS, font_mono=MONO)
    # quiet: Gradio's own lines would suggest a public share link; this page says where it is itself.
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                    mcp_server=False, enable_monitoring=False, footer_links=[], theme=theme, css=CSS, show_error=False,
                    quiet=True, prevent_thread_lock=True)
    except OSError as err:  # the port is taken, or the address is not this machine's
        where = f"{host}:{port}" if port is not None else f"{host}, ports from 7860"
        raise ServeError(f"cannot listen on {where}: {str(err).splitlines()[0]}") from None
    print(f"attngan-fast serve: open {page.local_url} in your browser (Ctrl+C stops the server)", flush=True)
    page.block_thread()
