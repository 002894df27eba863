"""Gin: parsing files and bindings (:func:`apply_gin`), bindings that would do nothing refused, and the arguments
given in Python recorded.

A gin binding only reaches a parameter its caller does not pass. Nested parts get some of their arguments
from their parent (the transformer's blocks, the critics' count, the spaces of the env), and a binding of one
of those would be silently ignored. :func:`check_bindings` refuses them when the config is parsed (through
:func:`apply_gin`) and again when an ``Experiment`` is built (for configs parsed with gin directly), with
one line naming the parameter to bind instead. Parts that get every argument from their parent (the
transformer's blocks and attention, the position embeddings, the value bins) are not configurable at all.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import os
import re
import tokenize
from collections.abc import Callable
from typing import Any

import gin

from amago_like.checks import ConfigTypeError, binding_type_error, check_choice, check_int, check_number

#: ``Configurable.parameter`` a parent always passes -> the parameter to bind instead (None: it comes from the
#: env or another part's size and is not a setting)
SET_BY: dict[str, str | None] = {
    **{
        f"{agent}.{p}": f"Experiment.{p}"
        for agent in ("Agent", "MultiTaskAgent")
        for p in ("max_seq_len", "tstep_encoder_type", "traj_encoder_type")
    },  # fmt: skip
    **{
        f"{agent}.{p}": None
        for agent in ("Agent", "MultiTaskAgent")
        for p in ("obs_space", "rl2_space", "action_space")
    },  # fmt: skip
    "CriticEnsemble.num_critics": "Agent.num_critics",
    "CriticEnsemble.num_bins": "MultiTaskAgent.num_bins",
    "CriticEnsemble.num_gammas": "Agent.gammas",
    "CriticEnsemble.state_dim": None,
    "CriticEnsemble.action_dim": None,
    "Actor.state_dim": None,
    "Actor.action_dim": None,
    "Actor.discrete": None,
    "Actor.multi_binary": None,
    "Actor.num_gammas": "Agent.multigamma_actor",
    "PopArt.num_gammas": "Agent.gammas",
    "RunningNorm.dim": None,
    "SigmaReparamLinear.d_in": None,
    "SigmaReparamLinear.d_out": None,
    **{f"{enc}.{p}": None for enc in ("FFTstepEncoder", "CNNTstepEncoder") for p in ("obs_space", "rl2_space")},
    **{
        f"{enc}.tstep_dim": None
        for enc in ("TformerTrajEncoder", "GRUTrajEncoder", "FFTrajEncoder", "IdentityTrajEncoder")
    },  # fmt: skip
    **{
        f"{enc}.max_seq_len": "Experiment.max_seq_len"
        for enc in ("TformerTrajEncoder", "GRUTrajEncoder", "FFTrajEncoder", "IdentityTrajEncoder")
    },  # fmt: skip
    "ExplorationWrapper.randomize_eps": "EpsilonGreedy.randomize_eps",
    "ExplorationWrapper.noise_correlation": "EpsilonGreedy.noise_correlation",
    **{f"{w}.env": None for w in ("ExplorationWrapper", "EpsilonGreedy", "BilevelEpsilonGreedy")},
}

#: parts that are not configurable (their parent passes every argument) -> where their settings are bound
NOT_CONFIGURABLE: dict[str, str] = {
    "TransformerBlock": "TformerTrajEncoder",
    "SelfAttention": "TformerTrajEncoder",
    "LearnedPosEmb": "TformerTrajEncoder",
    "FixedPosEmb": "TformerTrajEncoder",
    "ValueBins": "MultiTaskAgent",
}
# their parameters that the parent's take under another name
_RENAMED = {
    "TransformerBlock.window": "attention_window",
    "SelfAttention.window": "attention_window",
    "ValueBins.limit": "bin_limit",
    "ValueBins.sigma": "hl_gauss_sigma",
}


class GinBindingError(ValueError):
    """A gin file or binding that names an unknown configurable or parameter, does not parse, or would do nothing."""


class GinTypeError(GinBindingError, ConfigTypeError):
    """A gin binding whose value has the wrong type for the parameter it binds."""


def refusal(selector: str, param: str) -> str | None:
    """The one-line reason a binding of ``selector.param`` is refused (None: it is not)."""
    name = selector.split(".")[-1]
    key = f"{name}.{param}"
    if name in NOT_CONFIGURABLE:
        parent = NOT_CONFIGURABLE[name]
        return f"`{key}` is set by `{parent}.{_RENAMED.get(key, param)}`; bind that"
    if key not in SET_BY:
        return None
    instead = SET_BY[key]
    if instead is None:
        return f"`{key}` is passed by the part that builds {name} (from the env or another part's size); it cannot be bound"
    return f"`{key}` is set by `{instead}`; bind that"


def check_bindings() -> None:
    """GinBindingError for the first parsed binding (any scope) that would be ignored (see :data:`SET_BY`)."""
    for (scope, selector), params in gin.config._CONFIG.items():  # gin has no public listing of bindings
        for param in params:
            if reason := refusal(selector, param):
                where = f" (scope {scope!r})" if scope else ""
                raise GinBindingError(reason + where)


def bound_parameters(child: str) -> set[str]:
    """The parameters of configurable ``child`` that gin's parsed config binds (any scope, any module path)."""
    return {
        p for (_, selector), params in gin.config._CONFIG.items() if selector.split(".")[-1] == child for p in params
    }


def refuse_passed(child: str, passed: dict[str, str | None]) -> None:
    """Build-time check for a part built with arguments its parent passes only in some uses (e.g. Metaworld
    passing KEpisodeMetaworld's ``k_episodes``): GinBindingError if ``child.param`` is bound for one of them,
    naming ``passed[param]`` to bind instead (None: nothing can set it there)."""
    for param in sorted(bound_parameters(child) & set(passed)):
        if passed[param] is None:
            raise GinBindingError(
                f"`{child}.{param}` is fixed by the part that builds {child} here; it cannot be bound"
            )
        raise GinBindingError(f"`{child}.{param}` is set by `{passed[param]}`; bind that")


def check_arguments(
    owner: str, arguments: dict[str, Any], choices: dict[str, tuple], ints: dict[str, Any], numbers: tuple[str, ...]
) -> None:
    """Type and range checks of a configurable's arguments, each error naming ``owner.parameter``. ``ints`` maps
    a parameter to its minimum (None: any integer; ``"none"``: None or an integer >= 1)."""
    for name, allowed in choices.items():
        check_choice(name, arguments[name], allowed)
    for name, minimum in ints.items():
        if minimum == "none":
            check_int(f"{owner}.{name}", arguments[name], 1, allow_none=True)
        else:
            check_int(f"{owner}.{name}", arguments[name], minimum)
    for name in numbers:
        check_number(f"{owner}.{name}", arguments[name])


# ---------------------------------------------------------------------------------------------------------------
# arguments given to Experiment in Python (gin's operative config lists only what gin supplied)
# ---------------------------------------------------------------------------------------------------------------
RECORDED = (
    "max_seq_len",
    "make_train_env",
    "make_val_env",
    "tstep_encoder_type",
    "traj_encoder_type",
    "agent_type",
    "parallel_actors",
    "env_mode",
    "sample_actions",
    "eval_sample_actions",
    "mixed_precision",
    "seed",
)
_HEADER = "# Arguments of Experiment (given in Python or gin; read back by amago_like.evaluate):\n"
_LINE = re.compile(r"^# Experiment\.(\w+) = (.*)$", re.MULTILINE)


def _describe(value: Any) -> str | None:
    """A stable text for ``value``: a literal's repr, ``@Name`` of a class or function, ``Name(k=v, ...)`` of a
    partial with literal arguments; None for anything else (its repr could hold a memory address)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return repr(value)
    if isinstance(value, (list, tuple)) and value and all(callable(v) for v in value):
        parts = [_describe(v) for v in value]
        return None if None in parts else "[" + ", ".join(parts) + "]"
    if isinstance(value, functools.partial):
        inner, args = _describe(value.func), [_describe(a) for a in value.args]
        kwargs = {k: _describe(v) for k, v in value.keywords.items()}
        if inner is None or None in args or None in kwargs.values():
            return None
        return f"{inner}({', '.join(args + [f'{k}={v}' for k, v in kwargs.items()])})"
    if inspect.isclass(value) or inspect.isfunction(value):
        return "@" + value.__name__
    return None


def describe_arguments(arguments: dict[str, Any]) -> str:
    """Comment lines recording the :data:`RECORDED` arguments, for the end of config.gin."""
    lines = [f"# Experiment.{k} = {d}\n" for k in RECORDED if (d := _describe(arguments.get(k))) is not None]
    return "\n" + _HEADER + "".join(lines) if lines else ""


def read_arguments(config_text: str) -> dict[str, str]:
    """The recorded argument texts of a config.gin (empty for configs written before they were recorded)."""
    return dict(_LINE.findall(config_text))


def literal(text: str) -> Any:
    return ast.literal_eval(text)


# ---------------------------------------------------------------------------------------------------------------
# parsing gin files and bindings
# ---------------------------------------------------------------------------------------------------------------
# the repository root: gin `include 'configs/...'` lines resolve against it from any working directory
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_search_path_added = False


def apply_gin(configs: list[str], bindings: list[str]) -> None:
    """Parse gin files then bindings (later ones win). A file or binding that does not parse, names an
    unknown configurable or parameter, or binds a value of the wrong type (checked against the
    parameter's annotation) raises GinBindingError at once, in one line naming it and the fix."""
    from amago_like import register_configurables

    register_configurables()  # every configurable must be known before parsing

    global _search_path_added
    if not _search_path_added:
        gin.add_config_file_search_path(REPO_ROOT)
        _search_path_added = True

    for path in configs:
        _parse_and_check(functools.partial(gin.parse_config_file, path), f"in gin file {path}", path)
    for binding in bindings:
        _parse_and_check(functools.partial(gin.parse_config, binding), f"bad gin binding {binding!r}", binding=binding)
    check_bindings()  # a binding its configurable's parent would override fails now, not silently


# Defaults that changed after runs were written. A run's config.gin records every parameter its configurables
# had, so a run is rebuilt as it was made by binding, for each of these, the value its config.gin records, or the
# value here where the file predates the parameter (None: every run that used the parameter records it). Loading a
# run (apply_run_config) and resuming one from the command line, whose configs give the rest, bind them first.
CHANGED_DEFAULTS = {
    "CriticEnsemble.action_repeat": "1",
    "TformerTrajEncoder.pos_emb": None,
    "Experiment.exploration_wrapper_type": None,
    "EpsilonGreedy.steps_anneal": None,
    "Agent.num_actions_for_value": None,
    "CriticEnsemble.discrete_head": "False",
    "TformerTrajEncoder.dropout": None,
    "TformerTrajEncoder.n_layers": None,
    "Agent.averaged_policy_rate": "None",
    "Agent.novelty_bonus": "0.0",
    "CriticEnsemble.hidden": None,
    "TformerTrajEncoder.token_shift": "False",
    "DiskTrajDataset.recency": "0.0",
    "DiskTrajDataset.hindsight": "0.0",
    "TrajFolderDataset.hindsight": "0.0",
}


def values_as_built(path: str) -> list[str]:
    """Bindings of the CHANGED_DEFAULTS parameters to the values the run whose config.gin is ``path`` was built with."""
    with open(path) as f:
        text = f.read()
    bindings = []
    for name, before in CHANGED_DEFAULTS.items():
        recorded = re.search(rf"^\s*{re.escape(name)}\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE)
        value = recorded.group(1) if recorded else before
        if value is not None:
            bindings.append(f"{name} = {value}")
    return bindings


def apply_run_config(path: str, bindings: list[str] = ()) -> None:
    """A saved run's config.gin as the run was built (see CHANGED_DEFAULTS), then ``bindings``."""
    apply_gin([], values_as_built(path))
    apply_gin([path], list(bindings))


def _parse_and_check(parse: Callable[[], Any], source: str, path: str | None = None, binding: str = "") -> None:
    """``parse()``, then check the type of every binding it added or changed."""
    before = {key: dict(params) for key, params in gin.config._CONFIG.items()}  # gin has no public view
    try:
        parse()
    except (ValueError, KeyError, OSError, SyntaxError, TypeError, tokenize.TokenError) as e:
        raise GinBindingError(
            f"{source}: {_one_line(e, with_location=path is not None)}{_gin_hint(e, binding)}"
        ) from None
    for (scope, selector), params in gin.config._CONFIG.items():
        if selector.startswith("gin."):  # macros and gin's own configurables
            continue
        try:
            configurable = gin.config._REGISTRY.get_match(selector).wrapped
        except (KeyError, AttributeError):
            continue
        for param, value in params.items():
            old = before.get((scope, selector), {})
            if param in old and old[param] is value:
                continue
            problem = binding_type_error(configurable, param, value)
            if problem is not None:
                line = _line_of(path, selector.split(".")[-1], param) if path else ""
                raise GinTypeError(f"{source}{line}: {problem}")


def _one_line(error: BaseException, with_location: bool) -> str:
    """gin's multi-line parse error ("problem / In file ..., line N / statement") as one line."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    where = next((ln for ln in lines[1:] if ln.startswith("In ")), None)
    statement = lines[lines.index(where) + 1] if where and lines.index(where) + 1 < len(lines) else None
    found = re.search(r"line (\d+)", where or "")
    at = f" (line {found.group(1)}: {statement})" if found and statement and with_location else ""
    first = lines[0].rstrip(".")
    return (first if isinstance(error, ValueError) else f"{type(error).__name__}: {first}") + at


def _line_of(path: str, name: str, param: str) -> str:
    """ " line N" of the last statement binding ``name.param`` in the gin file ``path`` ("" if not there)."""
    pattern = re.compile(rf"^\s*(?:[\w.]+/)?(?:[\w.]+\.)?{re.escape(name)}\.{re.escape(param)}\s*=")
    try:
        with open(path) as f:
            hits = [i for i, ln in enumerate(f, 1) if pattern.match(ln)]
    except OSError:
        return ""
    return f" line {hits[-1]}" if hits else ""


def is_bound(parameter: str) -> bool:
    """Whether the parsed gin config binds ``parameter`` (e.g. "Experiment.max_seq_len")."""
    try:
        gin.query_parameter(parameter)
    except ValueError:
        return False
    return True


def _gin_hint(error: BaseException, binding: str = "") -> str:
    """What to write instead, for gin's "no such configurable / parameter" errors ("" for others)."""
    message = str(error)
    if isinstance(error, (tokenize.TokenError, SyntaxError)):
        return "; fix: close every bracket and quote, and quote strings (a binding is `Name.param = value`)"
    registry = gin.config._REGISTRY  # gin has no public listing of what is registered
    if (m := re.search(r"No configurable matching '([\w.]+)'", message)) and m.group(1) in NOT_CONFIGURABLE:
        param = re.search(rf"{m.group(1)}\.(\w+)", binding)
        return f"; fix: {refusal(m.group(1), param.group(1)) if param else 'bind ' + NOT_CONFIGURABLE[m.group(1)]}"
    if m := re.search(r"No configurable matching '([\w.]+)'", message):
        names = sorted({sel.split(".")[-1] for sel, _ in registry.items() if not sel.startswith("gin.")})
        close = difflib.get_close_matches(m.group(1).split(".")[-1], names, n=3)
        examples = ", ".join(close or ["Experiment", "DiskTrajDataset", "TformerTrajEncoder"])
        return f"; fix: name a registered configurable (a @gin.configurable of amago_like), e.g. {examples}"
    if m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message):
        try:
            fn = registry.get_match(m.group(1)).wrapped
            params = [
                p for p in inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters if p != "self"
            ]
        except (KeyError, ValueError, TypeError, AttributeError):
            return ""
        close = difflib.get_close_matches(m.group(2), params, n=1)
        if close:
            return f"; fix: did you mean {m.group(1)}.{close[0]}?"
        return f"; fix: {m.group(1)} takes {', '.join(params)}"
    return ""
