from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [192]),
    ('loss', 'cross-entropy'),
    ('batch_size', 128),
    ('dropout_p_embed', 0.45),
    ('dropout_p_hidden', 0.15),
    ('learning_rate', 0.1),
    ('momentum', 0.0),
    ('sample_alpha', 0.0),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 0.0),
    ('elu_param', 0.0),
    ('logq', 1.0),
])
