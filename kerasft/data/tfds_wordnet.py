"""The shipped WordNet definitions as a local TFDS dataset, `kerasft_wordnet`.

Importing this module registers the builder. It reads the files in
`datasets/wordnet/` (no network):

```python
import kerasft.data.tfds_wordnet  # registers "kerasft_wordnet"
batches = kerasft.data.instruction_batches(
    "kerasft_wordnet", tokenizer, split="validation", sequence_length=64
)
# or: tfds.load("kerasft_wordnet", split="train")
```

Features: `prompt`, `response`, `word`, `pos` (all text). Splits: `train`,
`validation`, `test`, with the same records, in the same order, as
`kerasft.data.load_wordnet`.
"""

from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils.py_utils import classproperty

from kerasft.data.datasets import SPLITS, load_wordnet, wordnet_path

NAME = "kerasft_wordnet"


class KerasftWordnet(tfds.core.GeneratorBasedBuilder):
    """WordNet 3.0 "Define the word X." instruction records (local files)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "WordNet 3.0 glosses, split by headword."}

    @classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file's path.

        TFDS's default lookup imports `importlib_resources`, a backport that
        tensorflow-datasets 4.9 only declares for Python < 3.9, so it fails
        on 3.11 unless that package happens to be installed.
        """
        return epath.Path(Path(__file__).resolve())

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"prompt": text, "response": text, "word": text, "pos": text}
            ),
            supervised_keys=None,
            # Keep the shipped (sorted) order, as `load_wordnet` returns it.
            disable_shuffling=True,
            homepage="https://wordnet.princeton.edu/",
            license="WordNet 3.0 license (datasets/wordnet/LICENSE)",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files: nothing to download.
        for split in SPLITS:
            wordnet_path(split)  # Fails early, naming a missing file.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        for index, record in enumerate(load_wordnet(split)):
            yield index, {key: record[key] for key in ("prompt", "response", "word", "pos")}


assert KerasftWordnet.name == NAME
