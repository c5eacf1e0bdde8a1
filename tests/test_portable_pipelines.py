"""A pipeline the benchmark saves opens in plain diffusers, with none of this package imported, and
samples the same images as the benchmark for the same seed and negative prompt."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmark.generation import GenerationSettings, diffusers_generate_fn
from benchmark.models.pipelines import NEGATIVE_PROMPT_FILE, build_tiny_pipeline, load_pipeline
from benchmark.training import TrainingConfig, train
from implicit_concept.geom_erasing.training_target import GeomErasingConfig, negative_prompt_for

from .test_training import FAST, MICRO, _write_shards

pytestmark = pytest.mark.slow

PLAIN_DIFFUSERS = """
import json, sys
import numpy as np, torch
from diffusers import DiffusionPipeline
directory, prompt, seed, steps, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
negative = open(f"{directory}/negative_prompt.txt", encoding="utf-8").read().strip()
pipe = DiffusionPipeline.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
pipe.set_progress_bar_config(disable=True)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("benchmark", "implicit_concept", "builders"))
image = pipe(prompt=[prompt], negative_prompt=[negative], generator=[torch.Generator("cpu").manual_seed(seed)],
             num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="pil").images[0]
np.save(sys.argv[6], np.asarray(image))
print(json.dumps({"imported": ours, "tokenizer": type(pipe.tokenizer).__name__, "negative": negative}))
"""


def test_a_geom_erasing_pipeline_samples_the_same_image_in_plain_diffusers(tmp_path):
    base = tmp_path / "base"
    build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=0).save_pretrained(base)
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",))
    out = train(base, _write_shards(tmp_path / "shards"), tmp_path / "ge", TrainingConfig(**FAST, geom=geom), progress=False)
    negative = negative_prompt_for(out)
    assert "<l" in negative and (out / NEGATIVE_PROMPT_FILE).read_text().strip() == negative

    settings = GenerationSettings(steps=3, image_size=MICRO.image_size)
    prompt, seed = "a square number 3", 1234
    ours = np.asarray(diffusers_generate_fn(load_pipeline(out), settings)([prompt], [negative], [seed])[0])

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n" + PLAIN_DIFFUSERS
    theirs_file = tmp_path / "theirs.npy"
    done = subprocess.run(
        [sys.executable, "-c", code, str(out), prompt, str(seed), str(settings.steps), str(settings.image_size), str(theirs_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["imported"] == [] and report["tokenizer"] == "CLIPTokenizer" and report["negative"] == negative
    assert np.array_equal(np.load(theirs_file), ours)
