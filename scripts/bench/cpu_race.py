"""The diffusers side of the CPU race (issue 17, benches/README.md "CPU race vs diffusers").

One fresh process renders one image the way `sdxl-worker render` does, with diffusers doing the
model work and k-diffusion doing the sampling:

  * `StableDiffusionXLPipeline.from_single_file(ckpt, config=<SDXL base config dir>,
    torch_dtype=torch.float32)` (needs `accelerate`, present in /work/refenv);
  * prompt and negative prompt encoded with the reference prompt encoder
    (scripts/fixtures/reference/kdiffusion/prompting.py: CLIP-L and bigG penultimate layers,
    pooled bigG; a non-empty negative is encoded, as A1111 does);
  * the A1111 "Automatic" schedule of the sampler through k-diffusion
    (scripts/fixtures/reference/kdiffusion/refpipe.py: DiscreteEpsDDPMDenoiser, CFG as one
    batch-2 UNet call, torch.randn noise from the seed);
  * VAE decode in f32, PNG written with PIL.

`torch.set_num_threads(2)` by default (`--threads`). Per-phase wall times go to stdout as one line
`PHASES {"load_ms": ..., "encode_ms": ..., "denoise_ms": ..., "decode_ms": ..., "import_ms": ...}`
(decode_ms includes the PNG write, like the worker's). Usage:

  cpu_race.py --checkpoint CKPT --config DIR --prompt P --negative-prompt N --steps 4 \
      --cfg-scale 7 --seed 42 --width 256 --height 256 [--sampler Euler] --out OUT.png
"""

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures", "reference", "kdiffusion"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--negative-prompt", required=True)
    ap.add_argument("--sampler", default="Euler")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg-scale", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--tokenizers", default=None,
                    help="dir holding tokenizer/ and tokenizer_2/ (default: the config dir's parent, as in "
                         "/work/shared/reference/data, whose config dir links them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image
    from transformers import CLIPTokenizer

    import refpipe
    from prompting import PromptEncoder

    t_imported = time.time()
    pipe = StableDiffusionXLPipeline.from_single_file(a.checkpoint, config=a.config, torch_dtype=torch.float32)
    tok_dir = a.tokenizers or os.path.dirname(os.path.abspath(a.config.rstrip("/")))
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(tok_dir, "tokenizer"))
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(tok_dir, "tokenizer_2"))
    t_loaded = time.time()
    enc = PromptEncoder(tok1, tok2, pipe.text_encoder, pipe.text_encoder_2)
    with torch.no_grad():
        uncond, cond = enc.conditioning(a.prompt, a.negative_prompt, "blend")
    t_encoded = time.time()
    r = refpipe.sample(pipe.unet, uncond, cond, sampler=a.sampler, steps=a.steps, cfg_scale=a.cfg_scale,
                       seed=a.seed, width=a.width, height=a.height, record=False)
    t_denoised = time.time()
    _, u8 = refpipe.decode(pipe.vae, r["final_latents"])
    Image.fromarray(u8.numpy()).save(a.out, format="PNG")
    t_done = time.time()
    latents = r["final_latents"]
    print("PHASES " + json.dumps({
        "import_ms": round((t_imported - T_START) * 1000),
        "load_ms": round((t_loaded - t_imported) * 1000),
        "encode_ms": round((t_encoded - t_loaded) * 1000),
        "denoise_ms": round((t_denoised - t_encoded) * 1000),
        "decode_ms": round((t_done - t_denoised) * 1000),
        "total_ms": round((t_done - T_START) * 1000),
        "torch_threads": torch.get_num_threads(),
        "latents_finite": bool(torch.isfinite(latents).all()),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
