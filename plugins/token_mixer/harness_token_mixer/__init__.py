"""RankMixer multi-head token mixing for the harness (mixer ``token_mixer``)."""
