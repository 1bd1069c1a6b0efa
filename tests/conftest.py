"""Test-wide settings. The models under test are tiny: one thread avoids oversubscribing CI's 2 cores."""

import torch

torch.set_num_threads(1)
