"""Records to training batches for keras-hub Gemma causal LMs.

A batch is `(x, y, sample_weight)` of numpy arrays:
`x = {"token_ids": int32 [B, T], "padding_mask": bool [B, T]}`, `y` int32
[B, T] (the next token at each position) and `sample_weight` float32 [B, T]
(1 where `y` is trained on). See `kerasft.data.batches`.

- Templates: `GemmaTurnTemplate`, `InstructionTemplate`, `PlainTemplate`, `get_template`.
- Batches: `instruction_batches`, `instruction_arrays`, `packed_text_batches`
  (all return a `keras.utils.PyDataset`, `SequenceBatches`).
- Loaders: `read_jsonl`, `read_csv`, `read_tf_dataset`, `read_tfds`,
  `load_records`.
- Splits: `train_validation_split`, `sample_records`.
- Preference pairs: `preference_batches`, `PreferenceBatches`,
  `load_wordnet_preference`; GRPO prompts `load_wordnet_pos` with
  `part_of_speech_reward`.
- General text (forgetting checks, replay): `load_general_text`,
  `load_probes`, `with_replay`.
- Shipped data: `load_wordnet`, `load_shakespeare`; the TFDS builder
  `kerasft_wordnet` is registered by `import kerasft.data.tfds_wordnet`.
- Tests: `kerasft.data.testing_tokenizer.tiny_gemma_tokenizer`.
"""

from kerasft.data.batches import (
    SequenceBatches,
    instruction_arrays,
    instruction_batches,
    packed_text_batches,
    rows_to_arrays,
)
from kerasft.data.datasets import data_dir, load_shakespeare, load_wordnet
from kerasft.data.encoding import encode_instruction_examples, tokenize_texts
from kerasft.data.loaders import (
    load_records,
    read_csv,
    read_jsonl,
    read_tf_dataset,
    read_tfds,
    write_jsonl,
)
from kerasft.data.packing import pack_examples, pack_token_stream, pad_examples
from kerasft.data.sentiment import (
    TWEETS_SENTIMENT_CLASS_NAMES,
    load_tweets_sentiment,
    text_classification_arrays,
)
from kerasft.data.splits import sample_records, train_validation_split
from kerasft.data.templates import (
    GemmaTurnTemplate,
    InstructionTemplate,
    PlainTemplate,
    PromptTemplate,
    get_template,
    list_templates,
    register_template,
)
from kerasft.data.preference import (
    PreferenceBatches,
    load_wordnet_pos,
    load_wordnet_preference,
    part_of_speech_reward,
    preference_batches,
)
from kerasft.data.general_text import (
    load_general_text,
    load_probes,
    with_replay,
)
