"""MNIST: the FC 784-300-100-10 network trained with every sparse training method."""
