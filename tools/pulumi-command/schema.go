package main

// schemaJSON is a minimal Pulumi package schema describing the resources this provider serves. It is written
// for this provider from the interface of the pulumi_command 1.2.1 SDK; it exists so that `pulumi plugin`,
// `pulumi package get-schema` and codegen calls work, not to regenerate the SDK.
const schemaJSON = `{
  "name": "command",
  "displayName": "Command (pdstack build)",
  "version": "1.2.1+pdstack",
  "description": "Run commands over SSH or locally (pdstack's implementation of the command 1.2.1 interface).",
  "config": {},
  "provider": {"type": "object"},
  "types": {
    "command:remote:Logging": {
      "type": "string",
` + loggingEnum + `
    },
    "command:local:Logging": {
      "type": "string",
` + loggingEnum + `
    },
    "command:remote:ProxyConnection": {
      "type": "object",
      "description": "The connection settings for a bastion/proxy host.",
      "properties": {
` + connectionProperties + `
      },
      "required": ["host"]
    },
    "command:remote:Connection": {
      "type": "object",
      "description": "Instructions for how to connect to a remote endpoint.",
      "properties": {
` + connectionProperties + `,
        "proxy": {"$ref": "#/types/command:remote:ProxyConnection", "description": "A bastion/proxy host to connect through."}
      },
      "required": ["host"]
    }
  },
  "resources": {
    "command:remote:Command": {
      "description": "Runs commands on a remote host over SSH on create, update and delete.",
      "inputProperties": {
        "connection": {"$ref": "#/types/command:remote:Connection", "secret": true, "description": "How to connect to the remote host."},
        "create": {"type": "string", "description": "The command to run on create (and on update when update is unset)."},
        "update": {"type": "string", "description": "The command to run on update."},
        "delete": {"type": "string", "description": "The command to run on delete."},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Environment variables (the server must AcceptEnv them)."},
        "triggers": {"type": "array", "items": {"$ref": "pulumi.json#/Any"}, "replaceOnChanges": true, "description": "Replace the resource when any of these values change."},
        "stdin": {"type": "string", "description": "Passed to the command's standard input."},
        "logging": {"$ref": "#/types/command:remote:Logging", "description": "Which output streams are logged (default stdoutAndStderr)."},
        "addPreviousOutputInEnv": {"type": "boolean", "description": "Set PULUMI_COMMAND_STDOUT/STDERR from the previous run (default true)."}
      },
      "requiredInputs": ["connection"],
      "properties": {
        "connection": {"$ref": "#/types/command:remote:Connection", "secret": true},
        "create": {"type": "string"},
        "update": {"type": "string"},
        "delete": {"type": "string"},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "triggers": {"type": "array", "items": {"$ref": "pulumi.json#/Any"}, "replaceOnChanges": true},
        "stdin": {"type": "string"},
        "logging": {"$ref": "#/types/command:remote:Logging"},
        "addPreviousOutputInEnv": {"type": "boolean"},
        "stdout": {"type": "string", "description": "The standard output of the last create/update."},
        "stderr": {"type": "string", "description": "The standard error of the last create/update."}
      },
      "required": ["connection", "stdout", "stderr"]
    },
    "command:local:Command": {
      "description": "Runs commands on the machine running Pulumi on create, update and delete.",
      "inputProperties": {
        "create": {"type": "string"},
        "update": {"type": "string"},
        "delete": {"type": "string"},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "triggers": {"type": "array", "items": {"$ref": "pulumi.json#/Any"}, "replaceOnChanges": true},
        "stdin": {"type": "string"},
        "logging": {"$ref": "#/types/command:local:Logging"},
        "addPreviousOutputInEnv": {"type": "boolean"},
        "interpreter": {"type": "array", "items": {"type": "string"}, "description": "The interpreter (default [\"/bin/sh\", \"-c\"])."},
        "dir": {"type": "string", "description": "The working directory."}
      },
      "properties": {
        "create": {"type": "string"},
        "update": {"type": "string"},
        "delete": {"type": "string"},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "triggers": {"type": "array", "items": {"$ref": "pulumi.json#/Any"}, "replaceOnChanges": true},
        "stdin": {"type": "string"},
        "logging": {"$ref": "#/types/command:local:Logging"},
        "addPreviousOutputInEnv": {"type": "boolean"},
        "interpreter": {"type": "array", "items": {"type": "string"}},
        "dir": {"type": "string"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"}
      },
      "required": ["stdout", "stderr"]
    }
  }
}`

// Shared by the remote Connection and ProxyConnection types.
const connectionProperties = `
        "host": {"type": "string", "description": "The address of the host."},
        "port": {"type": "number", "default": 22, "description": "The port to connect to."},
        "user": {"type": "string", "default": "root", "description": "The user for the connection."},
        "password": {"type": "string", "secret": true, "description": "The password for the connection."},
        "privateKey": {"type": "string", "secret": true, "description": "The contents of an SSH private key."},
        "privateKeyPassword": {"type": "string", "secret": true, "description": "The passphrase of the private key."},
        "agentSocketPath": {"type": "string", "description": "SSH agent socket path (default: $SSH_AUTH_SOCK)."},
        "dialErrorLimit": {"type": "integer", "default": 10, "description": "Max dial errors; -1 for unlimited."},
        "perDialTimeout": {"type": "integer", "default": 15, "description": "Seconds per dial attempt; 0 for no limit."},
        "hostKey": {"type": "string", "description": "The expected host key (OpenSSH public key line)."}`

// Shared by the remote and local Logging types.
const loggingEnum = `      "enum": [
        {"name": "Stdout", "value": "stdout", "description": "Capture stdout in logs but not stderr"},
        {"name": "Stderr", "value": "stderr", "description": "Capture stderr in logs but not stdout"},
        {"name": "StdoutAndStderr", "value": "stdoutAndStderr", "description": "Capture stdout and stderr in logs"},
        {"name": "None", "value": "none", "description": "Capture no logs"}
      ]`
