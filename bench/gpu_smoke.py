"""GPU smoke run of the ImageNet path: the paper's guided-diffusion UNet (random weights), every stage once, timed.

The diffusion model is the real architecture of guided-diffusion's `256x256_diffusion_uncond.pt` (about 553M
parameters), built by `diffaug_nb.convert` as a diffusers `UNet2DModel` with random weights: no checkpoint needed. The
classifier is a torchvision ResNet-50 (random weights). Stages, each after one untimed warm-up step:

  diffaug-train   DiffAug training steps: loss 0.5 (CE(f(x)) + CE(f(DiffAug(x)))), backward, SGD step
  de              DiffAug-Ensemble prediction over S = {0, 50, ..., 450} (10 one-step denoises per image)
  ddim            unguided DDIM sampling steps (diffusers' DDIMScheduler, eta = 0)
  ddim-guided     DDIM steps with classifier guidance through the denoiser: eps - sigma * scale * grad log p(y|x0_hat)

For each stage it prints images per second (DDIM: image-steps per second), seconds per step and peak memory (CUDA: torch's peak allocation for
that stage; CPU: the process's peak resident set so far). On a GPU with the defaults it runs in well under 5 minutes.

Usage:  python bench/gpu_smoke.py [--device cuda] [--batch 4] [--steps 3] [--ddim-steps 25] [--amp none|fp16|bf16]
        python bench/gpu_smoke.py --tiny      # tiny configuration on the CPU (what tests/test_gpu_smoke.py runs)
"""
from __future__ import annotations
import argparse, json, resource, sys, time
import torch
from diffusers import DDIMScheduler, UNet2DModel
from diffaug_nb.config import get_device
from diffaug_nb.convert import guided_diffusion_config, unet_config
from diffaug_nb.diffusion import Denoiser, vp_scheduler, to_unit
from diffaug_nb.augment import DiffAug, diffaug_loss
from diffaug_nb.evaluate import predict_de

# a 32 px version of the same options (learned sigma, scale-shift, resblock up/down, fixed head width)
TINY = dict(image_size=32, num_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
            num_head_channels=16)


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def _reset_peak(dev):
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)


def _peak_mb(dev)->float:
    if dev.type == 'cuda': return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(name, fn, steps, images_per_call, dev, results, warmup=None, inner=1):
    "Run `warmup` (default fn) once untimed, then fn() `steps` times timed (each call `inner` steps); record throughput, peak memory."
    (warmup or fn)(); _sync(dev); _reset_peak(dev)
    t0 = time.perf_counter()
    for _ in range(steps): out = fn()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    results[name] = dict(s_per_step=dt / inner, images_per_s=images_per_call / dt, peak_mb=_peak_mb(dev))
    r = results[name]
    unit = 'img-steps/s' if name.startswith('ddim') else 'img/s'
    print(f"{name:<13} {r['images_per_s']:>10.2f} {unit:<11} {r['s_per_step']:>10.3f} s/step {r['peak_mb']:>10.0f} MiB", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tiny', action='store_true', help='32 px UNet, small classifier, CPU: a functional check')
    ap.add_argument('--device', default=None, help="'auto', 'cpu', 'cuda', ... (default: auto; cpu with --tiny)")
    ap.add_argument('--batch', type=int, default=None, help='images per step (default 4; 2 with --tiny)')
    ap.add_argument('--steps', type=int, default=None, help='timed steps per stage (default 3; 1 with --tiny)')
    ap.add_argument('--ddim-steps', type=int, default=None, help='DDIM steps (default 25, the paper\'s ImageNet DDIM; 3 with --tiny)')
    ap.add_argument('--guidance-scale', type=float, default=2.5, help='classifier scale for ddim-guided (paper C.2: 2.5)')
    ap.add_argument('--amp', choices=('none', 'fp16', 'bf16'), default='none', help='autocast dtype for every stage')
    ap.add_argument('--json', default=None, help='also write the results to this file')
    a = ap.parse_args(argv)
    tiny = a.tiny
    dev = get_device(a.device or ('cpu' if tiny else 'auto'))
    B, steps = a.batch or (2 if tiny else 4), a.steps or (1 if tiny else 3)
    n_ddim = a.ddim_steps or (3 if tiny else 25)
    torch.manual_seed(0)

    gd = guided_diffusion_config('256x256_diffusion_uncond', **(TINY if tiny else {}))
    size = gd['image_size']
    t0 = time.perf_counter()
    unet = UNet2DModel(**unet_config(gd))
    den = Denoiser(unet, vp_scheduler(gd['noise_schedule'], gd['diffusion_steps'])).to(dev).eval()
    import torchvision
    clf = (torchvision.models.resnet18(num_classes=10) if tiny else torchvision.models.resnet50(num_classes=1000)).to(dev)
    K = 10 if tiny else 1000
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"device {dev}, {'tiny ' if tiny else ''}guided-diffusion UNet {size} px: {n_params:,} parameters "
          f"(built in {time.perf_counter() - t0:.1f} s); classifier {type(clf).__name__}; batch {B}, amp {a.amp}", flush=True)
    print(f"{'stage':<13} {'throughput':>16} {'time':>17} {'peak memory':>14}", flush=True)

    amp = None if a.amp == 'none' else dict(fp16=torch.float16, bf16=torch.bfloat16)[a.amp]
    def autocast(): return torch.autocast(dev.type, dtype=amp, enabled=amp is not None)
    x = torch.rand(B, 3, size, size, device=dev)
    y = torch.randint(0, K, (B,), device=dev)
    results = {}

    # 1. DiffAug training steps
    opt = torch.optim.SGD(clf.parameters(), lr=1e-3, momentum=0.9)
    aug = DiffAug(den)
    def train_step():
        clf.train(); opt.zero_grad(set_to_none=True)
        with autocast(): loss = diffaug_loss(clf, x, y, x, y, diffaug=aug)
        loss.backward(); opt.step()
        return loss.detach()
    loss = timed('diffaug-train', train_step, steps, B, dev, results)

    # 2. DE: 10 one-step denoises + classifier per image
    ts = range(0, 451, 50)
    def de():
        with autocast(): return predict_de(clf, den, x, ts=ts, batch_size=B, device=dev, progress=False)
    p = timed('de', de, steps, B, dev, results)

    # 3. DDIM, unguided and guided through the denoiser
    ddim = DDIMScheduler.from_config(den.scheduler.config, clip_sample=False, set_alpha_to_one=True)
    ddim.set_timesteps(n_ddim)
    clf.eval()
    def guided_eps(xt, t):
        eps = den.eps(xt, t)
        with torch.enable_grad():
            xg = xt.detach().requires_grad_()
            x0 = den.x0_hat(xg, t, clamp=False)
            logp = torch.log_softmax(clf(to_unit(x0).clamp(0, 1)).float(), -1)[torch.arange(B, device=dev), y].sum()
            g, = torch.autograd.grad(logp, xg)
        return eps - den.sigma(t, xt) * a.guidance_scale * g
    def sample(guided, n=None):
        def run():
            xt = torch.randn(B, 3, size, size, device=dev)
            with torch.no_grad(), autocast():
                for t in ddim.timesteps[:n]:
                    eps = guided_eps(xt, int(t)) if guided else den.eps(xt, int(t))
                    xt = ddim.step(eps.float(), int(t), xt).prev_sample
            return xt
        return run
    # warm-up: one step; timed: the whole loop; throughput counts image-steps (B x DDIM steps per loop)
    xs = timed('ddim', sample(False), 1, B * n_ddim, dev, results, warmup=sample(False, 1), inner=n_ddim)
    xg = timed('ddim-guided', sample(True), 1, B * n_ddim, dev, results, warmup=sample(True, 1), inner=n_ddim)
    for k in ('ddim', 'ddim-guided'): results[k]['steps'] = n_ddim

    ok = all(bool(torch.isfinite(v).all()) for v in (loss, p, xs, xg))
    summary = dict(device=str(dev), tiny=tiny, image_size=size, unet_parameters=n_params, batch=B, amp=a.amp,
                   stages=results, finite=ok, de_prob_sum=float(p.sum(-1).mean()))
    print(f"all outputs finite: {ok}", flush=True)
    if a.json:
        with open(a.json, 'w') as f: json.dump(summary, f, indent=1)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
