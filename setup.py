from setuptools import setup

setup(
    name="heartbeat",
    version="0.1.0",
    description="Last-seen presence recorded by ping and streamed over Server-Sent Events",
    python_requires=">=3.10",
    # twisted/plugins has no __init__.py on purpose: it is Twisted's
    # namespace, and our plugin file is dropped into it.
    packages=["heartbeat", "twisted.plugins"],
    package_data={"twisted.plugins": ["heartbeat_plugin.py"]},
    install_requires=[
        "twisted>=23.8",
        "klein>=23.5",
        "txredisapi>=1.4.10",
        "hiredis",
        "python-dotenv>=1.0",
        "pyjwt>=2.8",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "treq>=23.11",
            "hypothesis>=6.100",
            "playwright>=1.45",
        ],
    },
)
