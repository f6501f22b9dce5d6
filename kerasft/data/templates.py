"""Prompt templates: how a (prompt, response) record becomes model text.

A template renders two strings for training, the *prompt text* (everything
the model reads but is not trained to produce) and the *response text*
(what the loss is computed on), and renders the prompt text alone for
generation. Because training tokenises the two parts separately and
concatenates the ids, the prompt tokens seen in training are exactly the
tokens `generate()` is given at inference time.

BOS and EOS are not part of the rendered text: `kerasft.data` adds them as
token ids (`tokenizer.start_token_id`, `tokenizer.end_token_id`).

Templates are looked up by name with `get_template("gemma")`; new ones plug in
with `register_template`.
"""

from typing import Callable


class PromptTemplate:
    """Base class of prompt templates.

    Subclasses set `prompt_format` (with a `{prompt}` field) and
    `response_suffix` (text appended after the response, e.g. an end-of-turn
    marker), or override `render_prompt` / `render_response`.
    """

    name = None
    prompt_format = "{prompt}"
    response_suffix = ""

    def render_prompt(self, prompt: str) -> str:
        """Renders the text the model is given, for training or generation.

        Args:
            prompt: The user prompt (instruction, question, ...).

        Returns:
            The prompt text, ending where the model's answer starts.
        """
        if not isinstance(prompt, str):
            raise TypeError(
                f"`prompt` must be a string. Received: prompt={prompt!r} "
                f"of type {type(prompt).__name__}"
            )
        return self.prompt_format.format(prompt=prompt)

    def render_response(self, response: str) -> str:
        """Renders the text the model is trained to produce after the prompt.

        Args:
            response: The target answer.

        Returns:
            The response text followed by the template's `response_suffix`.
        """
        if not isinstance(response, str):
            raise TypeError(
                f"`response` must be a string. Received: response={response!r} "
                f"of type {type(response).__name__}"
            )
        return response + self.response_suffix

    def render(self, prompt: str, response: str) -> tuple[str, str]:
        """Renders a training pair.

        Args:
            prompt: The user prompt.
            response: The target answer.

        Returns:
            `(prompt_text, response_text)`; the full training text is their
            concatenation.
        """
        return self.render_prompt(prompt), self.render_response(response)

    def __repr__(self):
        return f"{type(self).__name__}()"


class GemmaTurnTemplate(PromptTemplate):
    """Gemma's chat turn format (Gemma 1, 2 and 3 instruction-tuned models).

    Prompt text:
    `"<start_of_turn>user\\n{prompt}<end_of_turn>\\n<start_of_turn>model\\n"`;
    response text: `"{response}<end_of_turn>"`. With a Gemma tokenizer
    `<start_of_turn>` and `<end_of_turn>` are single special tokens.

    Example:

    >>> GemmaTurnTemplate().render("Hi.", "Hello!")
    ('<start_of_turn>user\\nHi.<end_of_turn>\\n<start_of_turn>model\\n', 'Hello!<end_of_turn>')
    """

    name = "gemma"
    prompt_format = (
        "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
    )
    response_suffix = "<end_of_turn>"


class InstructionTemplate(PromptTemplate):
    """A plain instruction format for base (not instruction-tuned) models.

    Prompt text: `"Instruction: {prompt}\\nResponse: "`; response text: the
    response unchanged (EOS, added as a token, ends it).

    Example:

    >>> InstructionTemplate().render("Say hi.", "Hi.")
    ('Instruction: Say hi.\\nResponse: ', 'Hi.')
    """

    name = "instruction"
    prompt_format = "Instruction: {prompt}\nResponse: "
    response_suffix = ""


class PlainTemplate(PromptTemplate):
    """The prompt text as it is: completion-style and few-shot prompts for base models.

    Prompt text: `"{prompt}"`; response text: the response unchanged (EOS,
    added as a token, ends it). The prompt itself says where the answer
    starts (e.g. `"...\\nquickly: adverb\\nidolize:"`).

    Example:

    >>> PlainTemplate().render("2 + 2 =", " 4")
    ('2 + 2 =', ' 4')
    """

    name = "plain"


_TEMPLATES: dict[str, Callable[[], PromptTemplate]] = {}


def register_template(name: str, template_cls: Callable[[], PromptTemplate]):
    """Registers a template class (or zero-argument factory) under `name`.

    Args:
        name: The name `get_template` and `instruction_batches(template=...)`
            accept.
        template_cls: A `PromptTemplate` subclass or a callable returning a
            `PromptTemplate`.

    Raises:
        ValueError: If `name` is already registered.
    """
    if name in _TEMPLATES:
        raise ValueError(
            f"A template named {name!r} is already registered. Received: name={name!r}"
        )
    _TEMPLATES[name] = template_cls


def get_template(template) -> PromptTemplate:
    """Returns a template instance from a name or an instance.

    Args:
        template: A registered name (`"gemma"`, `"instruction"`, ...) or a
            `PromptTemplate` instance, returned unchanged.

    Returns:
        A `PromptTemplate`.

    Raises:
        ValueError: If `template` is an unknown name or another type.
    """
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, str) and template in _TEMPLATES:
        return _TEMPLATES[template]()
    raise ValueError(
        f"`template` must be one of {sorted(_TEMPLATES)} or a PromptTemplate "
        f"instance. Received: template={template!r}"
    )


def list_templates() -> list[str]:
    """Names of the registered templates, sorted."""
    return sorted(_TEMPLATES)


register_template(GemmaTurnTemplate.name, GemmaTurnTemplate)
register_template(InstructionTemplate.name, InstructionTemplate)
register_template(PlainTemplate.name, PlainTemplate)
