"""The sensitivity scan finds a layer made deliberately hard to quantize."""

from __future__ import annotations

import copy

import pytest
import torch

from quantization import sensitivity
from quantization.graph import export_unet

pytestmark = pytest.mark.slow

BROKEN = "down_blocks.1.resnets.0"


def _break(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy whose block ``BROKEN`` feeds both its convolutions one channel 1000 times
    larger than the others (and scales that channel's weights down to match): the
    per-tensor INT8 scale of their inputs then rounds every other channel to zero."""
    unet = copy.deepcopy(unet)
    block = unet.get_submodule(BROKEN)
    with torch.no_grad():
        for norm, conv in ((block.norm1, block.conv1), (block.norm2, block.conv2)):
            norm.weight[0] *= 1000
            norm.bias[0] *= 1000
            conv.weight[:, 0] /= 1000
    return unet


def test_candidates_cover_the_unet_in_order(tiny_pipe):
    names = sensitivity.candidate_blocks(tiny_pipe.unet)
    assert names[0] == "conv_in" and names[-1] == "conv_out"
    assert {"time_embedding", BROKEN, "mid_block.attentions.0", "up_blocks.1.attentions.0"} <= set(names)


def test_scan_ranks_the_broken_block_first(tiny_pipe, calibration_split):
    calib, held_out = calibration_split
    graph = export_unet(_break(tiny_pipe.unet), calib[0])
    candidates = ["conv_in", "down_blocks.0.resnets.0", BROKEN, "up_blocks.0.resnets.0"]
    results = sensitivity.scan(graph, candidates, calib[:4], held_out)
    assert [r.name for r in results][0] == BROKEN
    # clearly ahead: 2.0x the runner-up (conv_in) with the tiny pipeline's seed
    assert results[0].rel_mse > 1.5 * results[1].rel_mse
    assert sensitivity.choose_fallback(results, 1) == [BROKEN]
