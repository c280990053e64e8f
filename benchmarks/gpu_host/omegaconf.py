"""Stand-in: `OmegaConf.create` keeps the plain dict (the model files' fairseq `cfg`)."""


class OmegaConf:
    @staticmethod
    def create(content):
        return content
