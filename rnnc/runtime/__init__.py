"""What compiled models share at run time.

``compiled`` holds the CompiledModel and Backend protocols and the conventions every
backend follows (inputs, options, loading generated source); ``compiler`` and
``registry`` find a backend and compile; ``decoding`` drives a model's step contract;
``params``, ``weights`` and ``interop`` are the parameters, their files and their
conversion to PyTorch's and ONNX's layouts.
"""
