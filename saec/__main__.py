from saec.cli import app

app(prog_name="saec")
