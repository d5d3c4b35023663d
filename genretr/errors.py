"""User-facing errors: `python -m genretr.run` prints their message as one line and exits 2."""


class GenretrError(Exception):
    """A problem the user can fix (bad input, missing weights, bad config); never a bug."""


class DataError(GenretrError):
    """Bad dataset input. The message names the file and the entry."""

    def __init__(self, path, entry, problem: str):
        self.path, self.entry = str(path), entry
        where = f"{path}" if entry is None else f"{path} [{entry}]"
        super().__init__(f"{where}: {problem}")


class MissingWeightsError(GenretrError):
    """Pretrained weights are not at the configured path nor in the HF cache."""
