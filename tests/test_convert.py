"""The guided-diffusion converter, checked against an independent re-implementation of guided-diffusion's forward pass.

Nothing here comes from the converter: the layout of guided-diffusion's `UNetModel` (which layers, which key names and
shapes) and its forward pass are re-written in plain torch from a reading of `guided_diffusion/unet.py` and `nn.py`
(openai/guided-diffusion). Random weights under those names go through `convert_guided_diffusion`; the diffusers model
must then compute what the re-implementation computes, in float64, to rounding error.
"""
import math
import pytest, torch, torch.nn.functional as F
from diffusers import UNet2DModel
from diffaug_nb.convert import (guided_diffusion_config, unet_config, convert_state_dict, convert_guided_diffusion,
                                load_guided_diffusion)


# ---------------------------------------------------------------- guided-diffusion's layout, as UNetModel.__init__ builds it
def gd_layout(c):
    "(input_blocks, middle_block, output_blocks, final channels); a block is a list of layer specs."
    nc, mult, nrb = c['num_channels'], c['channel_mult'], c['num_res_blocks']
    att_ds = [c['image_size'] // r for r in c['attention_resolutions']]
    def heads(ch, up=False):
        if c['num_head_channels'] != -1: return ch // c['num_head_channels']
        return c['num_heads_upsample'] if up and c['num_heads_upsample'] != -1 else c['num_heads']
    ch = int(mult[0] * nc)
    inp, chans, ds = [[('conv', 3, ch)]], [ch], 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            layers = [('res', ch, int(m * nc), None)]
            ch = int(m * nc)
            if ds in att_ds: layers.append(('attn', ch, heads(ch)))
            inp.append(layers); chans.append(ch)
        if level != len(mult) - 1:
            inp.append([('res', ch, ch, 'down')] if c['resblock_updown'] else [('down', ch)])
            chans.append(ch); ds *= 2
    mid = [('res', ch, ch, None), ('attn', ch, heads(ch)), ('res', ch, ch, None)]
    out = []
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nrb + 1):
            layers = [('res', ch + chans.pop(), int(nc * m), None)]
            ch = int(nc * m)
            if ds in att_ds: layers.append(('attn', ch, heads(ch, up=True)))
            if level and i == nrb:
                layers.append(('res', ch, ch, 'up') if c['resblock_updown'] else ('up', ch)); ds //= 2
            out.append(layers)
    return inp, mid, out, ch


def gd_shapes(c):
    "guided-diffusion's state-dict key -> shape."
    emb = 4 * c['num_channels']
    inp, mid, out, ch = gd_layout(c)
    s = {'time_embed.0.weight': (emb, c['num_channels']), 'time_embed.0.bias': (emb,),
         'time_embed.2.weight': (emb, emb), 'time_embed.2.bias': (emb,)}
    if c['class_cond']: s['label_emb.weight'] = (1000, emb)
    def layer(p, spec):
        kind = spec[0]
        if kind == 'conv': s.update({f'{p}.weight': (spec[2], spec[1], 3, 3), f'{p}.bias': (spec[2],)})
        elif kind in ('down', 'up'):
            n = 'op' if kind == 'down' else 'conv'
            s.update({f'{p}.{n}.weight': (spec[1], spec[1], 3, 3), f'{p}.{n}.bias': (spec[1],)})
        elif kind == 'attn':
            C = spec[1]
            s.update({f'{p}.norm.weight': (C,), f'{p}.norm.bias': (C,), f'{p}.qkv.weight': (3*C, C, 1), f'{p}.qkv.bias': (3*C,),
                      f'{p}.proj_out.weight': (C, C, 1), f'{p}.proj_out.bias': (C,)})
        else:
            _, ci, co, _ = spec
            e = 2 * co if c['use_scale_shift_norm'] else co
            s.update({f'{p}.in_layers.0.weight': (ci,), f'{p}.in_layers.0.bias': (ci,),
                      f'{p}.in_layers.2.weight': (co, ci, 3, 3), f'{p}.in_layers.2.bias': (co,),
                      f'{p}.emb_layers.1.weight': (e, emb), f'{p}.emb_layers.1.bias': (e,),
                      f'{p}.out_layers.0.weight': (co,), f'{p}.out_layers.0.bias': (co,),
                      f'{p}.out_layers.3.weight': (co, co, 3, 3), f'{p}.out_layers.3.bias': (co,)})
            if ci != co: s.update({f'{p}.skip_connection.weight': (co, ci, 1, 1), f'{p}.skip_connection.bias': (co,)})
    for name, blocks in (('input_blocks', inp), ('output_blocks', out)):
        for k, block in enumerate(blocks):
            for j, spec in enumerate(block): layer(f'{name}.{k}.{j}', spec)
    for j, spec in enumerate(mid): layer(f'middle_block.{j}', spec)
    oc = 6 if c['learn_sigma'] else 3
    s.update({'out.0.weight': (ch,), 'out.0.bias': (ch,), 'out.2.weight': (oc, ch, 3, 3), 'out.2.bias': (oc,)})
    return s


def random_state_dict(c, seed=0):
    "Random float32 tensors under guided-diffusion's names (weights ~ 1/sqrt(fan_in), norms near 1)."
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in gd_shapes(c).items():
        x = torch.randn(shape, generator=g)
        if len(shape) > 1: x = x / math.sqrt(math.prod(shape[1:]))
        elif 'norm' in k or k.endswith(('in_layers.0.weight', 'out_layers.0.weight', 'out.0.weight')): x = 1 + 0.2 * x
        else: x = 0.2 * x
        sd[k] = x
    return sd


# ---------------------------------------------------------------- guided-diffusion's forward pass, in plain torch
def gd_forward(sd, c, x, t, y=None):
    "UNetModel.forward(x, t, y) of guided-diffusion, from its state dict `sd` (float64)."
    sd = {k: v.double() for k, v in sd.items()}
    gn = lambda h, p: F.group_norm(h, 32, sd[p + '.weight'], sd[p + '.bias'], eps=1e-5)
    conv = lambda h, p, pad=1: F.conv2d(h, sd[p + '.weight'], sd[p + '.bias'], padding=pad)
    lin = lambda h, p: F.linear(h, sd[p + '.weight'], sd[p + '.bias'])

    def res(h, emb, p, spec):
        _, ci, co, updown = spec
        a, skip = F.silu(gn(h, p + '.in_layers.0')), h
        if updown == 'down': a, skip = F.avg_pool2d(a, 2), F.avg_pool2d(skip, 2)
        if updown == 'up': a, skip = F.interpolate(a, scale_factor=2, mode='nearest'), F.interpolate(skip, scale_factor=2, mode='nearest')
        a = conv(a, p + '.in_layers.2')
        e = lin(F.silu(emb), p + '.emb_layers.1')[:, :, None, None]
        if c['use_scale_shift_norm']:
            scale, shift = e.chunk(2, dim=1)
            a = F.silu(gn(a, p + '.out_layers.0') * (1 + scale) + shift)
        else:
            a = F.silu(gn(a + e, p + '.out_layers.0'))
        a = conv(a, p + '.out_layers.3')
        if ci != co: skip = conv(skip, p + '.skip_connection', pad=0)
        return skip + a

    def attn(h, p, heads):
        b, C, H, W = h.shape
        z = h.reshape(b, C, H * W)
        qkv = F.conv1d(gn(z, p + '.norm'), sd[p + '.qkv.weight'], sd[p + '.qkv.bias'])
        ch = C // heads
        if c['use_new_attention_order']: q, k, v = (u.reshape(b * heads, ch, -1) for u in qkv.chunk(3, dim=1))
        else: q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
        w = torch.softmax(torch.einsum('bct,bcs->bts', q, k) / math.sqrt(ch), dim=-1)
        a = torch.einsum('bts,bcs->bct', w, v).reshape(b, C, -1)
        return (z + F.conv1d(a, sd[p + '.proj_out.weight'], sd[p + '.proj_out.bias'])).reshape(b, C, H, W)

    def run(block, prefix, h, emb):
        for j, spec in enumerate(block):
            p = f'{prefix}.{j}'
            if spec[0] == 'conv': h = conv(h, p)
            elif spec[0] == 'res': h = res(h, emb, p, spec)
            elif spec[0] == 'attn': h = attn(h, p, spec[2])
            elif spec[0] == 'down': h = F.conv2d(h, sd[p + '.op.weight'], sd[p + '.op.bias'], stride=2, padding=1)
            else: h = conv(F.interpolate(h, scale_factor=2, mode='nearest'), p + '.conv')
        return h

    half = c['num_channels'] // 2  # the sinusoidal embedding in float32, as guided-diffusion's nn.timestep_embedding computes it
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).double()
    emb = lin(F.silu(lin(temb, 'time_embed.0')), 'time_embed.2')
    if c['class_cond']: emb = emb + sd['label_emb.weight'][y]
    inp, mid, out, _ = gd_layout(c)
    hs, h = [], x.double()
    for k, block in enumerate(inp):
        h = run(block, f'input_blocks.{k}', h, emb); hs.append(h)
    h = run(mid, 'middle_block', h, emb)
    for k, block in enumerate(out):
        h = run(block, f'output_blocks.{k}', torch.cat([h, hs.pop()], dim=1), emb)
    return conv(F.silu(gn(h, 'out.0')), 'out.2')


# ---------------------------------------------------------------- the tests
TINY = dict(image_size=32, num_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
            num_head_channels=16)
CONFIGS = {
    # the paper's options (learned sigma, scale-shift norm, resblock up/down, 64-channel-style fixed head width), tiny
    'uncond-256-options': guided_diffusion_config('256x256_diffusion_uncond', **TINY),
    # the other options: plain conv resampling, additive time embedding, q|k|v order, fixed head count, class labels
    'conv-resample-classcond': guided_diffusion_config('256x256_diffusion', **{**TINY, 'num_res_blocks': 2, 'num_head_channels': -1,
        'num_heads': 2, 'resblock_updown': False, 'use_scale_shift_norm': False, 'use_new_attention_order': True}),
    # three levels, attention on two of them, fixed-sigma output (3 channels)
    'three-levels': guided_diffusion_config('256x256_diffusion_uncond', **{**TINY, 'channel_mult': (1, 2, 2),
        'attention_resolutions': (16, 8), 'learn_sigma': False}),
}


@pytest.mark.parametrize('name', list(CONFIGS))
def test_converted_model_computes_guided_diffusion_forward(name):
    c = CONFIGS[name]
    sd = random_state_dict(c)
    unet = convert_guided_diffusion(sd, c).double()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([0, 417, 999])
    y = torch.tensor([3, 999, 0]) if c['class_cond'] else None
    ref = gd_forward(sd, c, x, t, y)
    with torch.no_grad(): got = unet(x, t, class_labels=y).sample
    assert got.shape == ref.shape == (3, 6 if c['learn_sigma'] else 3, 32, 32)
    assert ref.abs().mean() > 0.1  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_a_permuted_attention_weight_is_caught():
    "The comparison can fail: swapping q and k inside one head breaks the match."
    c = CONFIGS['uncond-256-options']
    sd = random_state_dict(c)
    unet = convert_guided_diffusion(sd, c).double()
    bad = dict(sd)
    w = sd['input_blocks.3.1.qkv.weight'].clone()  # legacy order: head 0 rows are [q (16) | k (16) | v (16)]
    w[:16], w[16:32] = sd['input_blocks.3.1.qkv.weight'][16:32], sd['input_blocks.3.1.qkv.weight'][:16]
    bad['input_blocks.3.1.qkv.weight'] = w
    x, t = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([10, 500])
    with torch.no_grad(): got = unet(x, t).sample
    assert not torch.allclose(got, gd_forward(bad, c, x, t), rtol=1e-6, atol=1e-6)


def test_denoiser_uses_the_eps_channels(tmp_path):
    c = CONFIGS['uncond-256-options']
    sd = random_state_dict(c)
    path = tmp_path / '256x256_diffusion_uncond.pt'
    torch.save(sd, path)
    den = load_guided_diffusion(path, device='cpu', **TINY)
    assert den.unet.config.out_channels == 6
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 700])
    with torch.no_grad(): eps = den.eps(x, t)
    ref = gd_forward(sd, c, x, t)
    assert eps.shape == (2, 3, 32, 32)
    torch.testing.assert_close(eps.double(), ref[:, :3], rtol=1e-4, atol=1e-4)
    # the beta schedule is guided-diffusion's linear one: betas = linspace(1e-4, 0.02, 1000)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(den._abar.cpu(), abar, rtol=1e-5, atol=1e-6)


def test_full_size_256_uncond_every_key_and_shape():
    "The real checkpoint's layout (shapes only, on the meta device): every key maps, every shape matches, none left over."
    c = guided_diffusion_config('256x256_diffusion_uncond')
    shapes = gd_shapes(c)
    sd = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    new = convert_state_dict(sd, c)
    with torch.device('meta'): want = UNet2DModel(**unet_config(c)).state_dict()
    assert set(new) == set(want)
    assert all(tuple(new[k].shape) == tuple(want[k].shape) for k in want)
    n_gd = sum(math.prod(s) for s in shapes.values())
    assert n_gd == sum(v.numel() for v in want.values())
    assert want['conv_out.weight'].shape[0] == 6


def test_mismatched_flags_and_files_are_refused(tmp_path):
    c = CONFIGS['uncond-256-options']
    sd = random_state_dict(c)
    with pytest.raises(KeyError, match='does not match the configuration'):  # attention where the flags say none
        convert_guided_diffusion(sd, {**c, 'attention_resolutions': (8,)})
    with pytest.raises(KeyError, match='map to nothing'):
        convert_guided_diffusion({**sd, 'extra.weight': torch.zeros(1)}, c)
    with pytest.raises(ValueError, match='shape mismatch'):  # scale-shift emb_layers have 2C rows, additive ones C
        convert_guided_diffusion(sd, {**c, 'use_scale_shift_norm': False})
    with pytest.raises(KeyError, match='no '):
        convert_guided_diffusion({k: v for k, v in sd.items() if 'middle_block.1' not in k}, c)
    with pytest.raises(FileNotFoundError, match='jul-2021/256x256_diffusion_uncond.pt'):
        load_guided_diffusion(tmp_path / '256x256_diffusion_uncond.pt')
    torch.save(sd, tmp_path / '256x256_diffusion.pt')
    with pytest.raises(ValueError, match='class-conditional'):
        load_guided_diffusion(tmp_path / '256x256_diffusion.pt', **TINY)
    for name, msg in (('512x512_diffusion', 'channel_mult'), ('128x128_diffusion', 'heads of different widths')):
        with pytest.raises(ValueError, match=msg): unet_config(guided_diffusion_config(name))
