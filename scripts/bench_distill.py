"""Benchmark distillation steps on the default-size WorldUNet (channels 32, 64, 64; random weights).

    python scripts/bench_distill.py [--batch 32] [--rollout-steps 8] [--iters 5] [--threads 1]

Prints, from ONE run (medians over ``--iters`` timed steps after one warm-up step):

(a) the floor of a DanceOPD step: the model passes it cannot avoid, each timed alone (the student rollout
    forwards, each row only up to its own query index, one teacher forward with its CFG = 2x batch, one student
    forward + backward; the rollout with the whole batch stepping to the deepest query is printed for reference), our measured DanceOPD step (loss + backward + clip + AdamW step, the engine's inner loop)
    and the ratio step / floor (goal <= 1.15);
(b) a naive implementation of the same update written here (one sample per micro-step with gradient accumulation
    over the batch, full rollout keeping every state in a list, no truncation, separate cond / uncond teacher
    passes) vs ours: samples/s and the speed-up (goal >= 3x);
(c) seconds per optimizer step of every method in the layout of the setting configs (configs/world/setting_*.yaml:
    routing group, both routes t2i + edit in every step, ``--batch`` / 2 samples each), so every method trains on the
    same ``--batch`` samples per step; the ratios are what the full preset's DENSE_COST (report/plan.py) holds.

Data rendering is not part of any timed step (it is printed separately).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from danceopd.backends.world import WorldBackend
from danceopd.backends.world_model import WorldNetConfig, WorldUNet
from danceopd.core import Route, RouteSampler, sample_query_indices
from danceopd.methods import METHODS, MethodConfig, StepContext, TeacherField
from danceopd.train.data import WorldData
from danceopd.world import WorldTokenizer

TEXT_SCALE = 3.0


def build_net(tok: WorldTokenizer, edit: bool, seed: int, trainable: bool) -> WorldUNet:
    torch.manual_seed(seed)
    net = WorldUNet(WorldNetConfig(vocab_size=tok.vocab_size, edit=edit))
    with torch.no_grad():  # zero-initialized output layers would make every net output 0: perturb all weights
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    for p in net.parameters():
        p.requires_grad_(trainable)
    if trainable:
        for p in net.text.parameters():  # the engine's default: frozen text encoder
            p.requires_grad_(False)
    return net.train() if trainable else net.eval()


class Bench:
    def __init__(self, a):
        self.a = a
        tok = WorldTokenizer()
        self.student = WorldBackend(build_net(tok, True, 0, True), tok, 32)
        self.teachers = {"t2i": WorldBackend(build_net(tok, False, 1, False), tok, 32),
                         "edit": WorldBackend(build_net(tok, True, 2, False), tok, 32)}
        self.routes = [Route("t2i", "t2i", "t2i"), Route("edit", "edit", "edit")]
        self.data = {"t2i": WorldData("t2i", 7), "edit": WorldData("edit", 8)}
        self.params = self.student.trainable_parameters()
        self.opt = torch.optim.AdamW(self.params, lr=1e-6)
        group = max(g for g in (4, 3, 2, 1) if a.batch % g == 0)
        cfg = MethodConfig(rollout_steps=a.rollout_steps, k=a.k, bias=a.bias, group_size=group)
        fields = {n: TeacherField(be, TEXT_SCALE, 1.0) for n, be in self.teachers.items()}
        self.ctx = StepContext(self.student, fields, cfg, torch.device("cpu"),
                               route_weights={"t2i": 1.0, "edit": 1.0})
        self.ts = self.student.timesteps(a.rollout_steps, 1.0)
        self.t_roll_whole, self.row_evals = [], []

    def batch(self, route: str, n: int | None = None):
        return self.data[route].next(n or self.a.batch)

    # ---- ours: the engine's inner loop for one optimizer step ----------------------------------------------------
    def step(self, method, picked: list[Route], batches: dict) -> float:
        t0 = time.perf_counter()
        total = 0.0
        for r in picked:
            loss, _ = method.loss(self.ctx, r, batches[r.name])
            total = total + loss / len(picked)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    # ---- (a) the floor: the unavoidable model passes of one DanceOPD step, each timed alone -----------------------
    def floor(self, batch, seed: int) -> tuple[float, float, float, int]:
        a, s, te = self.a, self.student, self.teachers["t2i"]
        torch.manual_seed(seed)
        q = sample_query_indices(a.batch, a.rollout_steps, k=a.k, bias=a.bias)  # = the step's query indices
        depth = q.max(dim=1).values
        deepest = int(depth.max())
        x = torch.randn(s.latent_shape(a.batch))
        with torch.no_grad():
            cond = s.encode(batch.prompts)
            t_cfg = te.encode(batch.prompts * a.k).cat(te.encode([""] * (a.batch * a.k)))
        cond_k = s.encode([p for p in batch.prompts for _ in range(a.k)])
        xk = torch.randn(s.latent_shape(a.batch * a.k))
        tk = torch.rand(a.batch * a.k)
        active = [torch.nonzero(depth > i, as_tuple=True)[0] for i in range(deepest)]
        conds = [cond.select(r) for r in active]

        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(deepest):
                s.velocity(x[active[i]], self.ts[i].expand(len(active[i])), conds[i])
        t_roll = time.perf_counter() - t0

        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(deepest):
                s.velocity(x, self.ts[i].expand(a.batch), cond)
        self.t_roll_whole.append(time.perf_counter() - t0)
        self.row_evals.append(sum(len(r) for r in active))

        t0 = time.perf_counter()
        with torch.no_grad():
            te.velocity(torch.cat([xk, xk]), torch.cat([tk, tk]), t_cfg)
        t_teacher = time.perf_counter() - t0

        target = torch.randn_like(xk)
        t0 = time.perf_counter()
        ((s.velocity(xk, tk, cond_k) - target) ** 2).mean().backward()
        t_student = time.perf_counter() - t0
        self.opt.zero_grad(set_to_none=True)
        return t_roll, t_teacher, t_student, deepest

    # ---- (b) the naive implementation of the same DanceOPD update ---------------------------------------------------
    def naive_step(self, batch) -> float:
        a, s, te = self.a, self.student, self.teachers["t2i"]
        t0 = time.perf_counter()
        for b in range(a.batch):                                  # one sample per micro-step
            prompt = [batch.prompts[b]]
            q = sample_query_indices(1, a.rollout_steps, k=a.k, bias=a.bias)[0]
            states = [torch.randn(s.latent_shape(1))]
            with torch.no_grad():                                 # full rollout, every state kept
                cond = s.encode(prompt)
                for i in range(a.rollout_steps):
                    v = s.velocity(states[-1], self.ts[i].expand(1), cond)
                    states.append(states[-1] + (self.ts[i + 1] - self.ts[i]) * v)
            for j in range(a.k):
                x, t = states[int(q[j])], self.ts[int(q[j])].expand(1)
                with torch.no_grad():                             # separate cond / uncond teacher passes
                    v_c = te.velocity(x, t, te.encode(prompt))
                    v_u = te.velocity(x, t, te.encode([""]))
                    v_t = v_u + TEXT_SCALE * (v_c - v_u)
                v_s = s.velocity(x, t, s.encode(prompt))
                (((v_s - v_t) ** 2).mean() / (a.batch * a.k)).backward()   # gradient accumulation
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rollout-steps", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5, help="timed steps per measurement (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--bias", default="low_t")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods for table (c)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    bench = Bench(a)
    n_params = sum(p.numel() for p in bench.student.net.parameters())
    print(f"WorldUNet {bench.student.net.cfg.channels}, {n_params / 1e6:.2f}M params, 32x32, batch {a.batch}, "
          f"rollout {a.rollout_steps} steps, K={a.k}, bias {a.bias}, torch threads {torch.get_num_threads()}, "
          f"{a.iters} timed iters (median)")

    t0 = time.perf_counter()
    batch = bench.batch("t2i")
    print(f"data: rendering one batch of {a.batch} (t2i) takes {time.perf_counter() - t0:.3f} s (not in timings)")
    danceopd = METHODS["danceopd"]()
    t2i = bench.routes[0]

    # (a) floor vs ours, same seeds (so the same deepest query index) per iteration
    rows = []
    for it in range(a.iters + 1):
        seed = 1000 + it
        fl = bench.floor(batch, seed)
        torch.manual_seed(seed)
        ours = bench.step(danceopd, [t2i], {"t2i": batch})
        if it:  # the first one is the warm-up
            rows.append((*fl, ours))
    t_roll, t_teach, t_stud = med([r[0] for r in rows]), med([r[1] for r in rows]), med([r[2] for r in rows])
    floor = [r[0] + r[1] + r[2] for r in rows]
    ours = [r[4] for r in rows]
    ratio = med([o / f for o, f in zip(ours, floor)])
    print("\n(a) DanceOPD step vs its floor (t2i route)")
    print(f"  {'rollout forwards, per row (' + str(med(bench.row_evals[1:])) + ' row evals)':<44} {t_roll:8.3f} s")
    print(f"  {'  [ref: whole batch to deepest idx ' + str(med([r[3] for r in rows])) + ']':<44} "
          f"{med(bench.t_roll_whole[1:]):8.3f} s   (not in the floor)")
    print(f"  {'teacher forward, CFG (batch ' + str(2 * a.batch * a.k) + ')':<44} {t_teach:8.3f} s")
    print(f"  {'student forward + backward (batch ' + str(a.batch * a.k) + ')':<44} {t_stud:8.3f} s")
    print(f"  {'floor (sum)':<44} {med(floor):8.3f} s")
    print(f"  {'ours: DanceOPD step':<44} {med(ours):8.3f} s")
    print(f"  {'ratio ours / floor (goal <= 1.15)':<44} {ratio:8.3f}   {'OK' if ratio <= 1.15 else 'MISSED'}")

    # (b) naive vs ours, interleaved step by step (so a load change hits both alike), same seeds
    naive, ours_b = [], []
    for it in range(a.iters + 1):
        torch.manual_seed(2000 + it)
        dt_naive = bench.naive_step(batch)
        torch.manual_seed(2000 + it)
        dt_ours = bench.step(danceopd, [t2i], {"t2i": batch})
        if it:
            naive.append(dt_naive)
            ours_b.append(dt_ours)
    sps_ours, sps_naive = a.batch / med(ours_b), a.batch / med(naive)
    print("\n(b) naive implementation vs ours (same update, t2i route)")
    print(f"  {'':<10} {'s/step':>8} {'samples/s':>10}")
    print(f"  {'naive':<10} {med(naive):8.3f} {sps_naive:10.1f}")
    print(f"  {'ours':<10} {med(ours_b):8.3f} {sps_ours:10.1f}")
    speedup = med([n_ / o for n_, o in zip(naive, ours_b)])
    print(f"  speed-up {speedup:.2f}x (goal >= 3x)   {'OK' if speedup >= 3 else 'MISSED'}")

    # (c) every method
    per_route = a.batch // 2
    print(f"\n(c) seconds per optimizer step, {a.batch} samples = routes t2i + edit x {per_route} "
          "(the setting configs' layout: routing group)")
    print(f"  {'method':<14} {'routes/step':>11} {'s/step':>8} {'x danceopd':>11}")
    results = {}
    for name in [m for m in a.methods.split(",") if m]:
        method = METHODS[name]()
        if not method.trains:
            print(f"  {name:<14} {'-':>11} {'-':>8} {'-':>11}   (no training: static weight merge)")
            continue
        sampler = RouteSampler(bench.routes, seed=0, mode="group")   # every method, as the configs run it
        times = []
        for it in range(a.iters + 1):
            picked = sampler.sample_routes()
            batches = {r.name: bench.batch(r.bucket, per_route) for r in picked}
            torch.manual_seed(3000 + it)
            dt = bench.step(method, picked, batches)
            if it:
                times.append(dt)
        results[name] = med(times)
        rel = results[name] / results["danceopd"] if "danceopd" in results else float("nan")
        print(f"  {name:<14} {len(picked):>11} {results[name]:8.3f} {rel:11.2f}")


if __name__ == "__main__":
    main()
