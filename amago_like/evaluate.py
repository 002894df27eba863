"""Evaluate a saved run: its config.gin and weights, rolled out on a task split. No optimizer, no dataset,
no training envs.

    python -m amago_like.evaluate runs/learning/dark_room --split train --episodes 64
    python -m amago_like.evaluate runs/learning/ml1_reach --split test --actions mode
    python -m amago_like.evaluate runs/learning/ml1_reach_sampled --split train \\
        --gin 'KEpisodeMetaworld.train_goals = "benchmark"'
    python -m amago_like.evaluate runs/learning/dark_room --split test --episodes 8 --render_to videos
    python -m amago_like.evaluate runs/learning/ml1_reach_sampled --split test --actions mode --average 300:350 --each_goal

The env comes from the run's config.gin (the env factory the run was given, which runs record there, or else the
env configurable its config names); ``--env`` picks one for runs whose config names several. The separation
``--split train`` / ``--split test`` shows "has not learned the search" apart from "does not carry it over to
goals it never saw rewarded".

``--epoch N`` evaluates that epoch's saved weights (default: the latest policy); ``--average FIRST:LAST`` the
mean of the weights saved at those epochs, which evens out the swings between single checkpoints. An agent that
keeps averaged weights (``Agent.averaged_policy_rate``, on by default) acts with those, as the run's own
evaluations did; ``--live_weights`` acts with the weights the run trained instead.
``--episodes N`` (the default) draws tasks at random, with repeats. ``--protocol`` (envs with a task list:
Meta-World) plays every task x goal of the split exactly once instead (amago_like/protocols.py says what each
counts): ``k-attempt`` (also ``--each_goal``) the run's k attempts, ``metaworld`` Meta-World's meta-RL protocol,
``--adaptation_episodes`` (10) then ``--evaluation_episodes`` (3) scored. A protocol writes its task x attempt
success matrix to ``--out`` (default ``RUN/eval``) as ``PROTOCOL_SPLIT.csv`` and ``.png``, and every goal's
attempts as ``PROTOCOL_SPLIT_goals.csv`` (``_epochN`` / ``_epochsA-B`` appended for ``--epoch`` / ``--average``).
``--seed`` seeds the env resets and the sampled actions (default: the run's seed).
``--save_trajs_to DIR`` keeps every evaluated meta-episode there as a trajectory dataset; ``--render_to DIR``
writes the first actor's meta-episodes there as GIFs (``MUJOCO_GL=egl`` for Meta-World).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import gin
import gymnasium as gym
import torch

from amago_like.agents import Agent
from amago_like.config import GinBindingError, apply_gin, apply_run_config, is_bound, read_arguments
from amago_like.envs.builtin.bandit import MetaBandit
from amago_like.envs.builtin.dark_room import DarkRoom
from amago_like.envs.builtin.metaworld import KEpisodeMetaworld, Metaworld
from amago_like.envs.vector import make_vector_env
from amago_like.learner import seed_rngs
from amago_like.nets.distributions import TanhGaussian
from amago_like.nets.traj_encoders import TformerTrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder
from amago_like.protocols import PROTOCOLS, Protocol, ProtocolResult, run_protocol
from amago_like.rollout import KeptEpisodes, Rollout
from amago_like.run_dir import RunDir, average_weights, load_weights, read_checkpoint
from amago_like.threads import set_torch_threads

#: ``--env`` names (as examples/toy.py and examples/metaworld.py call them)
ENVS: dict[str, Callable[..., gym.Env]] = {"dark_room": DarkRoom, "bandit": MetaBandit, "metaworld": Metaworld}
# a run's settings that are not in its config.gin: Experiment's defaults
DEFAULTS = dict(
    tstep_encoder_type=FFTstepEncoder,
    traj_encoder_type=TformerTrajEncoder,
    agent_type=Agent,
    parallel_actors=12,
    seed=None,
)


def _resolve(name: str) -> Any:
    """A configurable (class or function) by its gin name."""
    import amago_like

    if hasattr(amago_like, name):
        return getattr(amago_like, name)
    match = gin.config._REGISTRY.get_match(name)  # gin has no public lookup
    if match is None:
        raise ValueError(f"unknown configurable {name!r}")
    return match.wrapped


def _factory_from_text(text: str) -> tuple[Callable[..., gym.Env], dict[str, Any]] | None:
    """(env factory, its keyword arguments) of a recorded ``@Name`` or ``Name(args)``; None for other texts."""
    m = re.fullmatch(r"@?(\w+)(?:\((.*)\))?", text.strip())
    if m is None:
        return None
    fn = _resolve(m.group(1))
    call = ast.parse(f"f({m.group(2) or ''})", mode="eval").body
    args = [ast.literal_eval(a) for a in call.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return fn, dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)


def _env_from_config(config_text: str) -> tuple[Callable[..., gym.Env], dict[str, Any]]:
    """The run's env factory: the one recorded in its config.gin, else the env configurable it names."""
    recorded = read_arguments(config_text)
    for key in ("make_val_env", "make_train_env"):
        if key in recorded and (found := _factory_from_text(recorded[key])) is not None:
            return found
    named = set(re.findall(r"^# Parameters for (\w+):", config_text, re.MULTILINE))
    named |= set(re.findall(r"^(\w+)\.\w+ *=", config_text, re.MULTILINE))
    found = sorted(n for n in named if _is_env(n))
    if "Metaworld" in found:  # Metaworld builds the KEpisodeMetaworld it also names
        found = ["Metaworld"]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the run's env from its config.gin (it names {found or 'no env'}); "
            f"pass --env ({', '.join(sorted(ENVS))})"
        )
    # a factory given in Python with arguments of its own (not a class, function or partial of literals) is not
    # recorded, and the env rebuilt here has only its gin bindings and defaults: say so rather than guess silently
    print(
        f"note: config.gin records no env factory; evaluating {found[0]} with its gin bindings and defaults "
        "(if the run's factory passed other arguments, bind them with --gin)",
        file=sys.stderr,
    )
    return _resolve(found[0]), {}


def _is_env(name: str) -> bool:
    try:
        fn = _resolve(name)
    except ValueError:
        return False
    return fn is Metaworld or (inspect.isclass(fn) and issubclass(fn, gym.Env) and not issubclass(fn, gym.Wrapper))


class NoAveragedWeights(ValueError):
    """Live weights were asked of a run whose agent keeps no averaged ones."""


class Evaluator:
    """A run's policy (from its config.gin and weights) and its env factory, ready to roll out."""

    def __init__(
        self,
        run_dir: str,
        bindings: list[str] = (),
        env: str | None = None,
        max_seq_len: int | None = None,
        device: str | torch.device | None = None,
        live_weights: bool = False,
    ):
        self.run_dir = run_dir
        self.live_weights = live_weights  # act with the trained weights even where the agent keeps averaged ones
        self.folder = RunDir(run_dir)
        if not os.path.isfile(self.folder.config):
            raise FileNotFoundError(
                f"{self.folder.config} not found; run_dir must be a run folder (runs/learning/NAME)"
            )
        apply_run_config(self.folder.config)
        from_config = gin.get_bindings("Experiment")
        apply_gin([], list(bindings))
        # Experiment arguments this evaluation binds itself (--gin) win over what the run used
        own = {k: v for k, v in gin.get_bindings("Experiment").items() if any(
            re.match(rf"\s*Experiment\.{k}\s*=", b) for b in bindings)}  # fmt: skip
        with open(self.folder.config) as f:
            config_text = f.read()
        if env is not None:
            self.make_env, self.env_kwargs = ENVS.get(env) or _resolve(env), {}
        else:
            self.make_env, self.env_kwargs = _env_from_config(config_text)
        self.env_kwargs.pop("split", None)
        # what the run used: its recorded arguments (Python's win over gin's), else its gin bindings, else defaults
        settings = {**DEFAULTS, **from_config}
        for k, text in read_arguments(config_text).items():
            if k in DEFAULTS or k == "max_seq_len":
                settings[k] = _resolve(text[1:]) if text.startswith("@") else ast.literal_eval(text)
        settings.update(own)
        if max_seq_len is not None:
            settings["max_seq_len"] = max_seq_len
        if "max_seq_len" not in settings:
            raise ValueError(
                f"{self.folder.config} does not record Experiment.max_seq_len (a run made before runs recorded "
                "their Python arguments): pass --max_seq_len"
            )
        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.policy: Agent | None = None
        self.weights = self.weights_tag = ""  # which weights were loaded: in words, and in file names

    def env_factory(self, split: str, **kwargs: Any) -> Callable[[], gym.Env]:
        return functools.partial(self.make_env, **{**self.env_kwargs, "split": split, **kwargs})

    def num_tasks(self, split: str) -> int:
        """Tasks of the split (envs with a task list, such as Meta-World's); ValueError for other envs."""
        with contextlib.closing(self.env_factory(split)()) as env:
            if not isinstance(getattr(env.unwrapped, "num_tasks", None), int):
                raise ValueError(
                    f"{type(env.unwrapped).__name__} has no task list (a num_tasks attribute and a task_index "
                    "argument): the protocols play every task of a split; use --episodes N"
                )
            return env.unwrapped.num_tasks

    def build_policy(self, rollout: Rollout) -> Agent:
        s = self.settings
        policy = s["agent_type"](
            obs_space=rollout.obs_space,
            rl2_space=rollout.rl2_space,
            action_space=rollout.action_space,
            max_seq_len=s["max_seq_len"],
            tstep_encoder_type=s["tstep_encoder_type"],
            traj_encoder_type=s["traj_encoder_type"],
        )
        return policy.to(self.device)

    def load(self, policy: Agent, epoch: int | None = None, average: tuple[int, int] | None = None) -> None:
        """The weights of ``epoch``, the mean of the weights saved at epochs ``average``, or the latest policy;
        with ``live_weights``, the policy no longer acts with the averaged copy of them it keeps."""
        if average is not None:
            source, weights = average_weights(saved_weights(self.folder, *average))
            load_weights(policy, weights, source)
            self.weights = f" (weights of epochs {average[0]}-{average[1]} averaged)"
            self.weights_tag = f"_epochs{average[0]}-{average[1]}"
        else:
            path = self.folder.latest_policy if epoch is None else self.folder.policy_weights(epoch)
            file, _, weights = read_checkpoint(path)
            load_weights(policy, weights, file)
            self.weights = "" if epoch is None else f" (epoch {epoch})"
            self.weights_tag = "" if epoch is None else f"_epoch{epoch}"
        if self.live_weights:
            if policy.averaged_policy is None:
                raise NoAveragedWeights(
                    f"live_weights: {self.run_dir}'s agent keeps no averaged weights (Agent.averaged_policy_rate = "
                    "None), so it is evaluated with its live weights already; drop live_weights"
                )
            policy.averaged_policy = None
            self.weights, self.weights_tag = self.weights + " (live weights)", self.weights_tag + "_live"

    def _loaded_policy(self, rollout: Rollout, epoch, average, on_policy: Callable[[Agent], None] | None) -> Agent:
        self.policy = self.build_policy(rollout)
        self.load(self.policy, epoch, average)
        if on_policy is not None:
            on_policy(self.policy)
        return self.policy

    def _seed(self, seed: int | None) -> int | None:
        """The evaluation's seed (the run's unless given), with which torch's sampled actions are seeded too."""
        seed = self.settings["seed"] if seed is None else seed
        if seed is not None:
            seed_rngs(seed)
        return seed

    def evaluate(
        self,
        split: str = "test",
        episodes: int = 64,
        each_goal: bool = False,
        sample: bool = True,
        epoch: int | None = None,
        average: tuple[int, int] | None = None,
        save_trajs_to: str | None = None,
        render_to: str | None = None,
        on_policy: Callable[[Agent], None] | None = None,
        seed: int | None = None,
    ) -> dict[str, float]:
        """Roll out ``episodes`` meta-episodes drawn at random (``each_goal``: the k-attempt protocol, every task of
        the split once: :meth:`run_protocol`'s metrics, with the means of the episodes' other metrics)."""
        if each_goal:
            result = self.run_protocol("k-attempt", split, sample, epoch, average, save_trajs_to=save_trajs_to,
                                       render_to=render_to, on_policy=on_policy, seed=seed)  # fmt: skip
            return result.summary("test")
        seed = self._seed(seed)
        make = self.env_factory(split, **({"render_mode": "rgb_array"} if render_to else {}))
        with KeptEpisodes(save_trajs_to) as saved:
            envs = make_vector_env(make, self.settings["parallel_actors"], "sync", saved.folder, record_to=render_to)
            rollout = Rollout(envs, self.device)
            try:
                policy = self._loaded_policy(rollout, epoch, average, on_policy)
                stats = rollout.collect(policy, 10**6, sample, seed, "evaluate", episodes)
            finally:
                rollout.close()
            saved.keep(stats.episodes)
        return stats.summary("test")

    def run_protocol(
        self,
        protocol: str | Protocol,
        split: str = "test",
        sample: bool = True,
        epoch: int | None = None,
        average: tuple[int, int] | None = None,
        max_actors: int | None = None,
        save_trajs_to: str | None = None,
        render_to: str | None = None,
        on_policy: Callable[[Agent], None] | None = None,
        seed: int | None = None,
    ) -> ProtocolResult:
        """Every task x goal of ``split`` once under ``protocol`` (a name takes Meta-World's episode counts),
        ``max_actors`` goals at a time (default: all)."""
        protocol = Protocol.named(protocol) if isinstance(protocol, str) else protocol
        make = self.env_factory(split, **({"render_mode": "rgb_array"} if render_to else {}))
        return run_protocol(
            protocol, lambda rollout: self._loaded_policy(rollout, epoch, average, on_policy), make,
            self.num_tasks(split), self.device, split, sample, self._seed(seed), max_actors, save_trajs_to, render_to,
        )  # fmt: skip


def saved_weights(folder: RunDir, first: int, last: int) -> list[str]:
    """The run's policy-weights files for epochs first..last, oldest first."""
    directory = os.path.dirname(folder.policy_weights(0))
    saved = sorted(
        int(m.group(1))
        for n in (os.listdir(directory) if os.path.isdir(directory) else [])
        if (m := re.fullmatch(r"policy_epoch_(\d+)\.pt", n))
    )
    chosen = [e for e in saved if first <= e <= last]
    if not chosen:
        sys.exit(f"error: no weights saved for epochs {first}-{last} in {directory}; saved epochs: {saved}")
    return [folder.policy_weights(e) for e in chosen]


def epoch_range(text: str) -> tuple[int, int]:
    """``"300:350"`` -> (300, 350)."""
    try:
        first, last = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST:LAST, e.g. 300:350") from None
    if first > last:
        raise argparse.ArgumentTypeError(f"{text!r}: FIRST is after LAST")
    return first, last


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m amago_like.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--env", choices=sorted(ENVS), default=None, help="the env (default: the one in config.gin)")
    p.add_argument("--split", default="train")
    p.add_argument("--benchmark", default=None, help="Meta-World benchmark (default: the one in config.gin)")
    p.add_argument("--episodes", type=int, default=64, help="meta-episodes drawn at random to average over")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None, help="play every task x goal of the split once")
    p.add_argument("--each_goal", action="store_true", help="the same as --protocol k-attempt")
    p.add_argument("--adaptation_episodes", type=int, default=None, help="--protocol metaworld: episodes to adapt "
                   "from before the scored ones (default: Meta-World's 10)")  # fmt: skip
    p.add_argument("--evaluation_episodes", type=int, default=None, help="--protocol metaworld: scored episodes "
                   "after the adaptation ones (default: Meta-World's 3)")  # fmt: skip
    p.add_argument("--max_actors", type=int, default=None, help="a protocol's goals played at once (default: all)")
    p.add_argument("--out", default=None, help="folder of a protocol's CSV and PNG files (default: RUN/eval)")
    p.add_argument("--seed", type=int, default=None, help="seed of env resets and sampled actions (default: the run's)")
    p.add_argument("--actions", choices=("sample", "mode"), default="sample", help="sample, or act with the mode")
    p.add_argument("--gin", action="append", default=[], help="binding applied over config.gin (repeatable)")
    p.add_argument("--max_seq_len", type=int, default=None, help="for runs whose config.gin does not record it")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--epoch", type=int, default=None, help="evaluate this epoch's saved weights (default: latest)")
    which.add_argument(
        "--average", metavar="FIRST:LAST", type=epoch_range, default=None, help="mean of the weights of these epochs"
    )
    p.add_argument(
        "--live_weights",
        action="store_true",
        help="act with the live weights of an agent that keeps averaged ones (evaluations act with those by default)",
    )
    p.add_argument("--render_to", default=None, help="write the first actor's meta-episodes here as GIFs")
    p.add_argument("--save_trajs_to", default=None, help="write every evaluated meta-episode here as a dataset")
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Evaluate, print the summary, and return the evaluation's metrics (``test/...``)."""
    p = parser()
    args = p.parse_args(argv)
    set_torch_threads(None, "both")  # as a training run's collection: the policy and env stepping share the cores
    flag = "--each_goal" if args.each_goal else f"--protocol {args.protocol}"
    if args.each_goal and args.protocol not in (None, "k-attempt"):
        p.error(f"--each_goal is --protocol k-attempt; drop one of it and --protocol {args.protocol}")
    protocol_name = "k-attempt" if args.each_goal else args.protocol
    counts = (args.adaptation_episodes, args.evaluation_episodes)
    if counts != (None, None) and protocol_name != "metaworld":
        p.error("--adaptation_episodes and --evaluation_episodes are for --protocol metaworld: pass it, or drop them")
    try:
        protocol = Protocol.named(protocol_name, *counts) if protocol_name else None
    except ValueError as e:
        p.error(str(e))
    try:
        ev = Evaluator(args.run_dir, args.gin, args.env, args.max_seq_len, live_weights=args.live_weights)
    except (FileNotFoundError, GinBindingError, ValueError) as e:
        sys.exit(f"error: {e}")
    metaworld = ev.make_env in (Metaworld, KEpisodeMetaworld)
    if metaworld and args.benchmark is not None:
        gin.bind_parameter("Metaworld.benchmark_name", args.benchmark)
    elif (
        metaworld
        and not is_bound("Metaworld.benchmark_name")
        and not {"benchmark", "benchmark_name"} & set(ev.env_kwargs)
    ):
        p.error(f"{args.run_dir}/config.gin does not name its Meta-World benchmark: pass --benchmark")
    if protocol_name is not None:
        try:
            ev.num_tasks(args.split)
        except ValueError as e:
            p.error(f"{flag} is for Meta-World runs and other envs with a task list: {e}")
    gaussians: list[TanhGaussian] = []  # the policy's distribution at every rollout step

    def watch(policy: Agent) -> None:
        """A hook on the actor that acts (an evaluation acts with the averaged one where the agent keeps it)."""
        policy.acting(averaged=True).actor.register_forward_hook(
            lambda _m, _i, dist: gaussians.append(dist) if isinstance(dist, TanhGaussian) else None
        )

    sample = args.actions == "sample"
    try:
        if protocol_name is None:
            metrics = ev.evaluate(args.split, args.episodes, False, sample, args.epoch, args.average,
                                  args.save_trajs_to, args.render_to, watch, args.seed)  # fmt: skip
        else:
            result = ev.run_protocol(protocol, args.split, sample, args.epoch, args.average, args.max_actors,
                                     args.save_trajs_to, args.render_to, watch, args.seed)  # fmt: skip
            metrics = result.summary("test")
    except NoAveragedWeights as e:
        sys.exit(f"error: --{e}")
    episodes = metrics["test/episodes"] if protocol_name else args.episodes
    print(
        f"{args.run_dir}{ev.weights} on the {args.split} split, {int(episodes)} meta-episodes"
        f"{f' (each task once, {protocol_name} protocol)' if protocol_name else ''}, {args.actions} actions: "
        f"return {metrics['test/return']:.2f}"
    )
    if gaussians:  # a wide pre-tanh std makes sampled actions mostly +-1 noise
        mean = torch.cat([d.mean.reshape(-1, d.mean.shape[-1]) for d in gaussians]).abs().mean(0)
        std = torch.cat([d.std.reshape(-1, d.std.shape[-1]) for d in gaussians]).mean(0)
        print(
            f"  policy pre-tanh |mean| per action dim {mean.cpu().numpy().round(2)}, std {std.cpu().numpy().round(2)}"
        )
    if protocol_name is not None:
        _print_protocol(result, args, ev.weights_tag)
    if metaworld:
        _print_metaworld(metrics, protocol=protocol_name is not None)
    elif protocol_name is None:
        _print_toy(ev.env_factory(args.split)(), metrics)
    return metrics


def _print_protocol(result: ProtocolResult, args: argparse.Namespace, weights_tag: str) -> None:
    """The protocol's figures, and the files of its success matrix."""
    print(f"  {result.protocol.describe()}: {result.success():.3f} (mean over {len(result.tasks)} tasks)")
    per_attempt = result.attempt_matrix().mean(axis=0)
    print("  success per attempt: " + ", ".join(f"{i + 1} {v:.3f}" for i, v in enumerate(per_attempt)))
    if len(result.tasks) > 1:
        print("  by task: " + ", ".join(f"{t} {v:.2f}" for t, v in result.task_success().items()))
    folder = args.out or os.path.join(args.run_dir, "eval")
    paths = result.write(folder, f"{result.protocol.name}_{args.split}{weights_tag}")
    print(f"  success per task and attempt: {paths[0]} and {paths[2]}; per goal: {paths[1]}")


def _print_metaworld(metrics: dict[str, float], protocol: bool = False) -> None:
    """Success per attempt and by task (unless a protocol printed its own), how long attempts stayed successful
    and how near they came."""
    trials = sorted((k for k in metrics if re.fullmatch(r"test/Trial \d+ Success", k)), key=lambda k: int(k.split()[1]))
    if not protocol:
        print(f"  success (any attempt) {metrics['test/Success']:.3f}")
        print("  per attempt: " + ", ".join(f"{k.split()[1]} {metrics[k]:.3f}" for k in trials))
    staying = [f"{k} Fraction" for k in trials]
    if all(k in metrics for k in staying):  # the share of each attempt's steps that were successful
        print("  steps successful per attempt: " + ", ".join(f"{metrics[k]:.3f}" for k in staying))
    closest = [f"test/Trial {k.split()[1]} Min Distance" for k in trials]
    if all(k in metrics for k in closest):  # mean over meta-episodes of each attempt's closest approach
        print("  min distance to target (m) per attempt: " + ", ".join(f"{metrics[k]:.3f}" for k in closest))
    tasks = sorted(k.split("/")[1] for k in metrics if re.fullmatch(r"test/[^/]+/Success", k))
    if len(tasks) > 1 and not protocol:
        print("  success by task: " + ", ".join(f"{t} {metrics[f'test/{t}/Success']:.2f}" for t in tasks))


def _print_toy(env: gym.Env, metrics: dict[str, float]) -> None:
    per_episode = sorted((k for k in metrics if k.startswith("test/Episode ")), key=lambda k: int(k.split()[1]))
    if hasattr(env, "best_return") and hasattr(env, "random_return"):  # the built-in toy envs
        refs = f"random {env.random_return():.2f}, best {env.best_return():.2f}"
        if hasattr(env, "memoryless_return"):
            refs += f", steering without memory {env.memoryless_return():.2f}"
        if isinstance(env, DarkRoom):
            refs += f", best searching the whole grid {env.best_return('grid'):.2f}"
            if env.split == "test":  # a policy optimal for the training goals searches their cells first
                refs += f", searching the training cells first {env.best_return('train_first'):.2f}"
        print(f"  ({refs})")
    print("  per episode: " + ", ".join(f"{k.split()[1]} {metrics[k]:.2f}" for k in per_episode))


if __name__ == "__main__":
    main()
