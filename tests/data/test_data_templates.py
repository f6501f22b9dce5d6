import pytest

from kerasft.data import (
    GemmaTurnTemplate,
    InstructionTemplate,
    PlainTemplate,
    PromptTemplate,
    get_template,
    list_templates,
    register_template,
)


def test_gemma_template_renders_exactly():
    template = GemmaTurnTemplate()
    assert template.render_prompt("Define the word cat.") == (
        "<start_of_turn>user\nDefine the word cat.<end_of_turn>\n<start_of_turn>model\n"
    )
    assert template.render("Hi.", "Hello!") == (
        "<start_of_turn>user\nHi.<end_of_turn>\n<start_of_turn>model\n",
        "Hello!<end_of_turn>",
    )


def test_instruction_template_renders_exactly():
    template = InstructionTemplate()
    assert template.render_prompt("Say hi.") == "Instruction: Say hi.\nResponse: "
    assert template.render("Say hi.", "Hi.") == ("Instruction: Say hi.\nResponse: ", "Hi.")


def test_plain_template_keeps_the_text_as_it_is():
    prompt = "house: noun\nrun: verb\n{x}:"
    assert PlainTemplate().render(prompt, " verb") == (prompt, " verb")
    assert isinstance(get_template("plain"), PlainTemplate)


def test_braces_in_prompt_are_kept_verbatim():
    assert InstructionTemplate().render_prompt("f({x})") == "Instruction: f({x})\nResponse: "


def test_registry_by_name():
    assert isinstance(get_template("gemma"), GemmaTurnTemplate)
    assert isinstance(get_template("instruction"), InstructionTemplate)
    template = InstructionTemplate()
    assert get_template(template) is template
    assert {"gemma", "instruction"} <= set(list_templates())


def test_unknown_template_names_the_value():
    with pytest.raises(ValueError, match="template='chatml'"):
        get_template("chatml")


def test_register_custom_template_and_reject_duplicates():
    class QA(PromptTemplate):
        name = "qa_test"
        prompt_format = "Q: {prompt}\nA:"
        response_suffix = "\n"

    register_template("qa_test", QA)
    assert get_template("qa_test").render("1+1?", " 2") == ("Q: 1+1?\nA:", " 2\n")
    with pytest.raises(ValueError, match="name='qa_test'"):
        register_template("qa_test", QA)


def test_non_string_prompt_is_rejected():
    with pytest.raises(TypeError, match="prompt=3"):
        GemmaTurnTemplate().render_prompt(3)
