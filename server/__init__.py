"""Tubelet: a video streaming server built on aiohttp."""
