"""The "Neural Networks" tutorial's ``Net`` (PyTorch), as the tutorial writes it.

``Net(kernel_size=3)`` is the seed's revision (3x3 kernels, 81,194 parameters);
``Net(kernel_size=5)`` is today's official tutorial (5x5 kernels, 61,706 parameters).
Input: a mini-batch ``(N, 1, 32, 32)`` in NCHW layout.
"""

import torch  # noqa: F401  (the tutorial imports it)
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):

    def __init__(self, kernel_size=3):
        super(Net, self).__init__()
        side = (((32 - kernel_size + 1) // 2) - kernel_size + 1) // 2  # 6 for k=3, 5 for k=5
        # 1 input image channel, 6 output channels, kernel_size x kernel_size convolution
        self.conv1 = nn.Conv2d(1, 6, kernel_size)
        self.conv2 = nn.Conv2d(6, 16, kernel_size)
        # an affine operation: y = Wx + b
        self.fc1 = nn.Linear(16 * side * side, 120)  # 16*6*6 (k=3) or 16*5*5 (k=5)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):                                    # (N, 1, 32, 32)      k=3
        # Max pooling over a (2, 2) window
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))      # (N, 6, 30, 30) -> (N, 6, 15, 15)
        # If the size is a square you can only specify a single number
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)           # (N, 16, 13, 13) -> (N, 16, 6, 6)
        x = x.view(-1, self.num_flat_features(x))            # (N, 576), C*H*W order
        x = F.relu(self.fc1(x))                              # (N, 120)
        x = F.relu(self.fc2(x))                              # (N, 84)
        x = self.fc3(x)                                      # (N, 10)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]  # all dimensions except the batch dimension
        num_features = 1
        for s in size:
            num_features *= s
        return num_features
