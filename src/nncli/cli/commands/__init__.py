"""One module per command, or per family of commands that share their options: outputs (forward),
onehot, signal (loss, grads, step), inspect (params, init), export, train, evaluate, files (clean),
trace, stats, gradcheck, explain. Each parses its options, makes one library call, builds one view (views/)
and emits it; cli/app.py registers each with one line. No command module imports another."""
