"""``dicomproxy init``'s model: the hand-over questions of the interface document (接口文档第 3 节),
their validation, the config and env file they become, and the table handed to the cloud and the
PACS administrator. No prompting and no exiting here: that is ``cli.init``'s job.

``answers`` (questions, :class:`Answers`), ``fields`` and ``orgcode`` (one parser per kind of
answer), ``database`` (kinds of view database and their URL), ``writer`` (TOML and env file),
``table`` (the printed hand-over table).
"""
