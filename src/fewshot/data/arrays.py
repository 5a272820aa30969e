"""Pickled arrays from other tools, read without running their code."""
import pickle

from ..errors import FewshotError


class _NumpyOnly(pickle.Unpickler):
    """Builds numpy arrays, dtypes and builtin containers; refuses anything else."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict"),
               ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
               ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("builtins", "object"),
               ("__builtin__", "object"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to build {module}.{name}")


def load_pickle(path, what):
    """The object in pickle `path`, built from numpy arrays and builtin containers only."""
    try:
        with open(path, "rb") as f:
            return _NumpyOnly(f, encoding="latin1").load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, KeyError, AttributeError, TypeError,
            IndexError, ImportError) as error:
        raise FewshotError(f"cannot read {path} ({type(error).__name__}: {error}); it is not {what}, "
                           f"or it is damaged") from None
