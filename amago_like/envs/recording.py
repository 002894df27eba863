"""Record an env's rendered frames and write each finished episode as an animated GIF."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
from PIL import Image

from amago_like.io import atomic_write


class FrameRecorder(gym.Wrapper):
    """Keeps ``env.render()`` after every reset and step; when an episode ends (terminated or
    truncated) it writes ``{save_dir}/{prefix}_{n:04d}.gif``, one frame per timestep (the reset's
    included), and starts over. The env must be made with ``render_mode="rgb_array"``.

    A GIF is written whole to a temporary name and then renamed, so a killed run leaves every
    earlier episode readable. Frames stay in memory for one episode: keep ``render_size`` small
    on long episodes (e.g. ``KEpisodeMetaworld.render_size``).
    """

    def __init__(self, env: gym.Env, save_dir: str, prefix: str = "episode", fps: int = 20):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"recording frames needs an env made with render_mode='rgb_array', but {env} has "
                f"render_mode={env.render_mode!r}; pass render_mode='rgb_array' to the env your factory builds"
            )
        if fps < 1:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        os.makedirs(save_dir, exist_ok=True)
        self.save_dir, self.prefix, self.fps = save_dir, prefix, int(fps)
        self.episodes_written = 0
        self._frames: list[np.ndarray] = []

    def _grab(self) -> None:
        frame = np.asarray(self.env.render())
        if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
            raise ValueError(f"render() must return an (H, W, 3 or 4) image, got shape {frame.shape}")
        self._frames.append(frame[..., :3].astype(np.uint8, copy=False))

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self._frames = []
        self._grab()
        return out

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._grab()
        if terminated or truncated:
            self.write_episode()
        return obs, reward, terminated, truncated, info

    def write_episode(self) -> str | None:
        """Write the frames recorded so far as the next GIF (none if nothing was recorded)."""
        if not self._frames:
            return None
        path = os.path.join(self.save_dir, f"{self.prefix}_{self.episodes_written:04d}.gif")
        images = [Image.fromarray(f) for f in self._frames]
        duration = 1000 // self.fps
        atomic_write(
            path,
            lambda f: images[0].save(
                f, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
            ),
            "write fewer or smaller GIFs (render_size)",
        )
        self.episodes_written += 1
        self._frames = []
        return path
