"""One module per command family: outputs (forward, onehot), signal (loss, grads, step), inspect
(params, init), fit (train, evaluate). A command's options, its call into the library and its
rendering read together; cli.py registers each with one line."""
