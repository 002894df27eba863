"""Rendering: DarkRoom / Meta-World frames, FrameRecorder GIFs, Experiment.evaluate_test(render_to=...)."""

import functools
import os

import numpy as np
import pytest
from PIL import Image

from amago_like import DarkRoom, DiskTrajDataset, Experiment, KEpisodeMetaworld, MetaBandit
from amago_like.cli import apply_gin
from amago_like.envs import make_vector_env
from amago_like.envs.recording import FrameRecorder

TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "models", "tiny.gin")


def gif_frames(path) -> tuple[list[np.ndarray], int]:
    """The GIF's distinct frames (RGB) and its total duration in ms (Pillow merges repeated frames)."""
    frames, total = [], 0
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
            total += im.info["duration"]
    return frames, total


def test_dark_room_draws_agent_and_goal():
    env = DarkRoom(size=5, render_mode="rgb_array", cell_pixels=4)
    assert DarkRoom().render() is None
    env.reset(seed=0, options={"goal": (4, 0)})
    env.step(1)  # up: the agent moves from the centre (2, 2) to (2, 3)
    image = env.render()
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    # row 0 of the image is the top of the grid (y = 4); pixel (1, 1) of a cell is inside its border
    cell = lambda x, y: image[(4 - y) * 4 + 1, x * 4 + 1]  # noqa: E731
    np.testing.assert_array_equal(cell(2, 3), [255, 255, 255])
    np.testing.assert_array_equal(cell(4, 0), [40, 200, 80])
    np.testing.assert_array_equal(cell(2, 2), [40, 40, 40])
    with pytest.raises(ValueError, match="unknown DarkRoom.render_mode 'human'"):
        DarkRoom(render_mode="human")


def test_frame_recorder_writes_one_gif_per_episode(tmp_path):
    env = FrameRecorder(
        DarkRoom(size=5, episode_length=3, k_episodes=2, render_mode="rgb_array"), str(tmp_path), fps=10
    )
    for _ in range(2):
        obs, _ = env.reset(seed=1)
        first = env.render()
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(4)  # right
            done = terminated or truncated
    assert sorted(os.listdir(tmp_path)) == ["episode_0000.gif", "episode_0001.gif"]
    frames, duration = gif_frames(tmp_path / "episode_0001.gif")
    assert duration == (2 * 3 + 1) * 100  # the reset's frame and one per step, 100 ms each
    np.testing.assert_array_equal(frames[0], first)
    assert len(frames) > 1 and not np.array_equal(frames[0], frames[1])


def test_frame_recorder_needs_rgb_array(tmp_path):
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        FrameRecorder(MetaBandit(), str(tmp_path))
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        FrameRecorder(DarkRoom(), str(tmp_path))


def test_already_vectorized_envs_refuse_recording(tmp_path):
    import gymnasium as gym

    make = lambda: gym.vector.SyncVectorEnv([DarkRoom, DarkRoom])  # noqa: E731
    with pytest.raises(ValueError, match="needs env_mode 'sync' or 'async'"):
        make_vector_env(make, 2, "already_vectorized", record_to=str(tmp_path))


def test_evaluate_test_records_the_first_actor(tmp_path):
    apply_gin([TINY], [])
    make = functools.partial(DarkRoom, episode_length=4, k_episodes=2)
    exp = Experiment(
        run_name="run",
        ckpt_base_dir=str(tmp_path),
        max_seq_len=8,
        dataset=DiskTrajDataset(str(tmp_path), "run"),
        make_train_env=make,
        make_val_env=make,
        val_timesteps_per_epoch=8,
        parallel_actors=3,
        env_mode="sync",
        verbose=False,
        seed=0,
    )
    exp.start()
    try:
        videos = tmp_path / "videos"
        metrics = exp.evaluate_test(functools.partial(make, render_mode="rgb_array"), 16, render_to=str(videos))
        exp.evaluate_test(functools.partial(make, render_mode="rgb_array"), 8, True)  # the reference's render=True
    finally:
        exp.close()
    assert sorted(os.listdir(tmp_path / "run" / "videos")) == ["episode_0000.gif"]  # into the run folder
    assert metrics["test/episodes"] == 6  # 3 actors x 2 meta-episodes of 8 steps
    assert sorted(os.listdir(videos)) == ["episode_0000.gif", "episode_0001.gif"]  # the first actor's only
    _, duration = gif_frames(videos / "episode_0000.gif")
    assert duration == (2 * 4 + 1) * 50


def test_metaworld_render_mode_is_checked_and_passed_on():
    assert KEpisodeMetaworld("reach-v3").render() is None
    with pytest.raises(ValueError, match="unknown KEpisodeMetaworld.render_mode 'human'"):
        KEpisodeMetaworld("reach-v3", render_mode="human")
    env = KEpisodeMetaworld("reach-v3", render_mode="rgb_array", render_size=32, max_episode_length=5)
    with pytest.raises(RuntimeError, match="before reset"):
        env.render()
    env.reset(seed=0)
    assert env._sim.render_mode == "rgb_array" and (env._sim.width, env._sim.height) == (32, 32)
    try:
        frame = env.render()
    except Exception as e:  # no OpenGL backend on this machine (set MUJOCO_GL=egl or osmesa where there is one)
        pytest.skip(f"MuJoCo cannot render here: {type(e).__name__}")
    finally:
        env.close()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
