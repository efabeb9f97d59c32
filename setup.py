"""Installs the `rigl` package: `pip install -e ".[cpu]"` (or gpu / tpu), plus `test`."""

import setuptools

TF_VERSION = '2.21.0'
# The newest tensorflow-tpu on PyPI; it brings libtpu from PyPI too.
TF_TPU_VERSION = '2.20.0'

setuptools.setup(
    name='rigl',
    version='0.1.0',
    description=('Rigging the Lottery (RigL) and other sparse-training methods for '
                 'TensorFlow 2 and Keras 3.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['rigl', 'rigl.*']),
    install_requires=[
        'absl-py>=1.0',
        'gin-config>=0.5',
        'keras>=3.10,<4',
        'matplotlib>=3.7',
        'mlxtend>=0.23',
        'numpy>=1.26',
        'tensorboard>=2.16',  # tf.summary needs it; TensorFlow 2.21 no longer installs it
        'tensorflow-datasets>=4.9',
    ],
    extras_require={
        'cpu': [f'tensorflow-cpu=={TF_VERSION}'],
        'gpu': [f'tensorflow[and-cuda]=={TF_VERSION}'],
        'tpu': [f'tensorflow-tpu=={TF_TPU_VERSION}', 'libtpu', 'cloud-tpu-client'],
        # LiteRT, to run the TFLite files of rigl.export.
        'export': ['ai-edge-litert>=2.0'],
        'test': ['pytest>=7', 'pytest-xdist>=3'],
        # keras_hub's backbones, for the tests of users' models (it brings TensorFlow Text).
        'hub': ['keras-hub>=0.21'],
        'bench': ['torch==2.13.0', 'rigl-torch==0.5.2'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
