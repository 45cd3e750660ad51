"""The demo page (gradio): tabs for text-to-image, local edit and global edit; models side by side with the judge's
verdicts. Needs the ``demo`` extra (``pip install -e .[demo]``); runs offline, bound to 127.0.0.1 by default."""

from __future__ import annotations

import os
import threading

from ..errors import UserError
from ..world.understand import unknown_words
from .core import MAX_MODELS, MAX_UPLOAD_BYTES, TABS, Demo
from .html import CSS, card_html, error_html, flag_html, result_html

TITLES = {"t2i": "Text to image", "local_edit": "Local edit", "global_edit": "Global edit"}
INTRO = ("**danceopd demo: ShapesWorld.** Pick models (shipped teachers `world:*`, shipped converged "
         "students `shipped:*`, or any run folder, e.g. `runs/quick/A_danceopd` after `make demo`), a prompt or an instruction (examples from every GenEval / "
         "GEdit category, or your own words) and a seed. Every model's output is shown with the judge's verdict per "
         "constraint; for edits, the input and the exact target. The world's vocabulary is closed: unknown words "
         "are flagged.")


def import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page and the server never call out
    try:
        import gradio as gr
    except ImportError:
        raise UserError("the demo needs gradio: pip install -e '.[demo]' (or bash install.sh dev)") from None
    return gr


def _source_preview(demo: Demo, tab: str, label: str | None) -> str:
    from ..world import DEFAULT_WORLD, render
    from .core import Panel, describe_layout

    ex = demo.example(tab, label)
    if ex is None:
        return ""
    src = ex.example.source
    return card_html(Panel("example input", render(src, DEFAULT_WORLD), note=describe_layout(src.layout())), "input")


def build(demo: Demo):
    gr = import_gradio()
    choices = demo.model_choices()

    def run_t2i(prompt, models, extra, seed):
        try:
            return result_html(demo.text_to_image(prompt, [*(models or []), extra or ""], int(seed or 0)))
        except UserError as e:
            return error_html(str(e))

    def run_edit(tab):
        def fn(instruction, label, upload, models, extra, seed):
            ex = demo.example(tab, label)
            try:
                return result_html(demo.edit(instruction, [*(models or []), extra or ""], int(seed or 0), ex, upload))
            except UserError as e:
                return error_html(str(e))
        return fn

    def pick(tab):
        def fn(label):
            ex = demo.example(tab, label)
            return ex.text if ex else ""
        return fn

    with gr.Blocks(title="danceopd demo") as page:
        gr.Markdown(INTRO)
        for tab in TABS:
            labels = [e.label for e in demo.examples[tab]]
            with gr.Tab(TITLES[tab], id=tab, elem_id=f"tab-{tab}"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        example = gr.Dropdown(labels, value=labels[0], label="Example (category: text)",
                                              elem_id=f"{tab}-example")
                        text = gr.Textbox(value=demo.examples[tab][0].text, lines=2,
                                          label="Prompt" if tab == "t2i" else "Instruction", elem_id=f"{tab}-text")
                        flags = gr.HTML("", elem_id=f"{tab}-flags")
                        if tab != "t2i":
                            preview = gr.HTML(_source_preview(demo, tab, labels[0]), elem_id=f"{tab}-preview")
                            upload = gr.File(label=f"…or upload an input image (PNG/JPEG, at most "
                                             f"{MAX_UPLOAD_BYTES // 2**20} MB; shown as the world's 32x32)",
                                             file_types=[".png", ".jpg", ".jpeg"], type="filepath",
                                             elem_id=f"{tab}-upload")
                        models = gr.CheckboxGroup(choices, value=demo.default_models(tab),
                                                  label=f"Models (up to {MAX_MODELS})", elem_id=f"{tab}-models")
                        extra = gr.Textbox(label="Another model: a run folder or .safetensors file", lines=1,
                                           elem_id=f"{tab}-extra")
                        seed = gr.Number(value=0, precision=0, label="Seed", elem_id=f"{tab}-seed")
                        go = gr.Button("Generate" if tab == "t2i" else "Edit", variant="primary",
                                       elem_id=f"{tab}-run")
                    with gr.Column(scale=3):
                        out = gr.HTML("", elem_id=f"{tab}-out")
                example.change(pick(tab), example, text, show_progress="hidden")
                text.change(lambda t: flag_html(unknown_words(t or "")), text, flags, show_progress="hidden")
                if tab == "t2i":
                    go.click(run_t2i, [text, models, extra, seed], out)
                else:
                    example.change(lambda lab, tab=tab: _source_preview(demo, tab, lab), example, preview,
                                   show_progress="hidden")
                    go.click(run_edit(tab), [text, example, upload, models, extra, seed], out)
    return page


def serve(demo: Demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Start the page; warms up the default models in the background so the first request is fast."""
    gr = import_gradio()
    page = build(demo)
    defaults = list(dict.fromkeys(m for tab in TABS for m in demo.default_models(tab)))
    threading.Thread(target=demo.warm_up, args=(defaults,), daemon=True).start()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True, ssr_mode=False,
                max_file_size=MAX_UPLOAD_BYTES, theme=theme, css=CSS, footer_links=[],
                prevent_thread_lock=not block)
    return page
